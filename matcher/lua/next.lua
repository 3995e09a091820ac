-- next.lua: the queue holder takes the client's next frame, or frees the queue.
-- KEYS[1] the client's queue  KEYS[2] its lock
-- ARGV[1] this gateway's id  ARGV[2] lock length (ms)
-- Returns the next frame, or nil when the queue is empty (the lock is then
-- released in the same step, so a frame appended a moment later is never stranded).
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return nil end
local frame = redis.call('LPOP', KEYS[1])
if frame then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
else
  redis.call('DEL', KEYS[2])
end
return frame
