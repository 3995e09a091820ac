-- enqueue.lua: appends a frame to its sender's own queue; claims the queue when free.
-- KEYS[1] the client's queue  KEYS[2] its lock (same slot)
-- ARGV[1] the frame (opaque)  ARGV[2] this gateway's id  ARGV[3] lock length (ms)
-- Returns the first frame to apply when this call took the free lock, else nil
-- (the holder, on this gateway or another, drains until the queue is empty).
redis.call('RPUSH', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return nil end
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
return redis.call('LPOP', KEYS[1])
