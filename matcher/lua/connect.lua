-- connect.lua: an authenticated socket joins; returns the `ready` state.
-- KEYS[1] match base
-- ARGV[1] account id  ARGV[2] role  ARGV[3] socket id  ARGV[4] gateway id
-- Returns {'ok', state JSON, resumed (0|1)} or {'err', 'unavailable'}
local uid, role, sock, gw, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], clock_ms()
if not require_alive() then return err('unavailable') end
redis.call('HSET', k('socks:' .. uid), sock, gw)
redis.call('SADD', k('gwsocks:' .. gw), uid .. ' ' .. sock)
redis.call('SADD', k('gws'), gw)
local resumed = redis.call('ZREM', k('deadline:grace'), uid)
return {'ok', cjson.encode(client_state(uid, role, now)), resumed}
