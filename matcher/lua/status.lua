-- status.lua: an astrologer sets its own status.
-- KEYS[1] match base
-- ARGV[1] astrologer id  ARGV[2] online | break | offline
-- ARGV[3] socket  ARGV[4] op  ARGV[5] ref (JSON)
-- Returns {'ok'} or {'err', code}: unavailable | not_found
local aid, status, now = ARGV[1], ARGV[2], clock_ms()
if not require_alive() then return err('unavailable') end
local a = k('ast:' .. aid)
if redis.call('SISMEMBER', k('asts'), aid) == 0 then return err('not_found') end
local current = redis.call('HGET', a, 'status')
ack(aid, ARGV[3], ARGV[4], ARGV[5])
if status ~= current then
  if status == 'offline' then
    go_offline(aid, 'self', now)
  else
    if status == 'online' then redis.call('HSET', a, 'missed', 0, 'idle', now) end
    set_status(aid, status, 'self', now)
  end
end
flush()
return {'ok'}
