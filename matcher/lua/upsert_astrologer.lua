-- upsert_astrologer.lua: an admin created or changed an astrologer.
-- KEYS[1] match base
-- ARGV[1] id  ARGV[2] name  ARGV[3] weight  ARGV[4] capacity  ARGV[5] is_top (0|1)
-- ARGV[6] flow_enabled (0|1)
-- Returns 1. Status, load and missed count are live state and are left alone.
local aid = ARGV[1]
local a = k('ast:' .. aid)
redis.call('HSET', a, 'name', ARGV[2], 'weight', ARGV[3], 'capacity', ARGV[4],
           'is_top', ARGV[5], 'flow_enabled', ARGV[6])
if redis.call('HEXISTS', a, 'status') == 0 then
  redis.call('HSET', a, 'status', 'offline', 'load', 0, 'missed', 0, 'idle', 0)
end
redis.call('SADD', k('asts'), aid)
touch(aid)
redis.call('INCR', k('config'))  -- a rebuild that read the record before this reads it again
metric('nudge')  -- wakes the matcher: capacity or flow may have changed
flush()
return 1
