-- disconnect.lua: a socket left; the account's grace starts when it was the last one.
-- KEYS[1] match base
-- ARGV[1] account id  ARGV[2] socket id  ARGV[3] gateway id  ARGV[4] grace (ms)
-- Returns the number of sockets the account still has.
local uid, sock, gw = ARGV[1], ARGV[2], ARGV[3]
redis.call('HDEL', k('socks:' .. uid), sock)
redis.call('SREM', k('gwsocks:' .. gw), uid .. ' ' .. sock)
local left = redis.call('HLEN', k('socks:' .. uid))
if left == 0 then
  redis.call('ZADD', k('deadline:grace'), clock_ms() + tonumber(ARGV[4]), uid)
  metric('nudge')  -- wakes the matcher: it must know of the new deadline
  flush()
end
return left
