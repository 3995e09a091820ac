-- reap.lua: a gateway stopped heartbeating (it died): its sockets are gone.
-- KEYS[1] match base
-- ARGV[1] fencing token  ARGV[2] grace (ms)
-- Returns {'ok', gateways reaped}. Each account left without a socket starts its grace.
if redis.call('GET', k('fence')) ~= ARGV[1] then return err('fenced') end
local now, grace_ms = clock_ms(), tonumber(ARGV[2])
local reaped = 0
for _, gw in ipairs(redis.call('SMEMBERS', k('gws'))) do
  if redis.call('EXISTS', k('gw:' .. gw)) == 0 then
    for _, entry in ipairs(redis.call('SMEMBERS', k('gwsocks:' .. gw))) do
      local uid, sock = string.match(entry, '^(%S+) (%S+)$')
      redis.call('HDEL', k('socks:' .. uid), sock)
      if redis.call('HLEN', k('socks:' .. uid)) == 0 then
        redis.call('ZADD', k('deadline:grace'), now + grace_ms, uid)
      end
    end
    redis.call('DEL', k('gwsocks:' .. gw))
    redis.call('SREM', k('gws'), gw)
    reaped = reaped + 1
  end
end
return {'ok', reaped}
