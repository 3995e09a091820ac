-- snapshot.lua: what the flow algorithm needs for one decision, read atomically.
-- KEYS[1] match base
-- ARGV[1] fencing token  ARGV[2] extra general requests to read beyond the free slots
-- ARGV[3] (optional) an outbox entry id: read nothing unless the outbox holds a later
--   entry that is not quiet (lib.lua flush)
-- Returns {'ok', JSON} with JSON = {astrologers: [[id, weight, capacity, load, is_top,
-- flow_enabled, idle_ms]], general: [[rid, seq, [excluded]]], direct: {aid: [[rid, seq, []]]},
-- top_flow, boost, stretch}; {'ok', ''} when nothing changed after ARGV[3];
-- or {'err', 'fenced' | 'unavailable'}.
if redis.call('GET', k('fence')) ~= ARGV[1] then return err('fenced') end
if not require_alive() then return err('unavailable') end
-- Every change appends to the outbox, so an outbox with nothing after the matcher's
-- last read but quiet entries means the last decision still holds (the matcher asks
-- on each wake-up). Past the first few entries, a change is assumed.
if ARGV[3] then
  local newer = redis.call('XRANGE', k('outbox'), '(' .. ARGV[3], '+', 'COUNT', 8)
  local changed = #newer == 8
  for _, entry in ipairs(newer) do
    if #entry[2] == 2 then changed = true break end  -- {'d', JSON}: not quiet
  end
  if not changed then return {'ok', ''} end
end
local astrologers, direct = {}, {}
local free_total = 0
for _, aid in ipairs(redis.call('SMEMBERS', k('online'))) do
  local a = redis.call('HMGET', k('ast:' .. aid), 'weight', 'capacity', 'load', 'is_top',
                       'flow_enabled', 'idle')
  local capacity, load = tonumber(a[2]), tonumber(a[3] or '0')
  astrologers[#astrologers + 1] = {aid, tonumber(a[1]), capacity, load, a[4] == '1',
                                   a[5] == '1', tonumber(a[6] or '0')}
  local free = capacity - load
  if free > 0 then
    free_total = free_total + free
    local head = redis.call('ZRANGE', k('line:' .. aid), 0, free - 1, 'WITHSCORES')
    if #head > 0 then
      local items = {}
      for i = 1, #head, 2 do items[#items + 1] = {head[i], tonumber(head[i + 1]), {}} end
      direct[aid] = items
    end
  end
end
local general = {}
if free_total > 0 then
  local head = redis.call('ZRANGE', k('line:general'), 0, free_total + tonumber(ARGV[2]) - 1,
                          'WITHSCORES')
  for i = 1, #head, 2 do
    general[#general + 1] = {head[i], tonumber(head[i + 1]),
                             redis.call('SMEMBERS', k('excl:' .. head[i]))}
  end
end
local flow = redis.call('HMGET', k('flow'), 'top_flow', 'boost')
return {'ok', cjson.encode({astrologers = astrologers, general = general, direct = direct,
                            top_flow = flow[1] or 'on', boost = tonumber(flow[2] or '2'),
                            stretch = redis.call('GET', k('stretch')) or ''})}
