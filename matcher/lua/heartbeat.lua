-- heartbeat.lua: a gateway says it lives.
-- KEYS[1] match base
-- ARGV[1] gateway id  ARGV[2] time to live (ms)
-- Returns {alive, sockets}: alive 0 while live state is missing (being rebuilt);
-- sockets = how many sockets Redis knows for this gateway (0 after a data loss:
-- the gateway then registers its sockets again).
local gw = ARGV[1]
redis.call('SET', k('gw:' .. gw), '1', 'PX', tonumber(ARGV[2]))
redis.call('SADD', k('gws'), gw)
return {redis.call('EXISTS', k('alive')), redis.call('SCARD', k('gwsocks:' .. gw))}
