-- snapshot.lua: what the flow algorithm needs for one decision, read atomically.
-- KEYS[1] match base
-- ARGV[1] fencing token  ARGV[2] extra general requests to read beyond the free slots
-- ARGV[3] an outbox entry id, or '': read nothing unless the outbox holds a later
--   entry that is not quiet (lib.lua flush)
-- ARGV[4] '1': the matcher holds the roster; only the astrologers changed since its
--   last such read (astdirty) are read, online or not  ARGV[5] the free slots in the
--   roster it holds (with ARGV[4])  ARGV[6] the sweep's cursor in the online set
--   ARGV[7] how many online astrologers the sweep reads again (with ARGV[4])
-- Returns {'ok', JSON} with JSON = {astrologers: [[id, weight, capacity, load, is_top,
-- flow_enabled, idle_ms, online]], general: [[rid, seq, [excluded]]], direct: {aid:
-- [[rid, seq, []]]}, general_limit, changed_only, sweep (the cursor to go on from),
-- online (how many are), top_flow, boost, stretch};
-- {'ok', ''} when nothing changed after ARGV[3]; or {'err', 'fenced' | 'unavailable'}.
if redis.call('GET', k('fence')) ~= ARGV[1] then return err('fenced') end
if not require_alive() then return err('unavailable') end
-- Every change appends to the outbox, so an outbox with nothing after the matcher's
-- last read but quiet entries means the last decision still holds (the matcher asks
-- on each wake-up). Past the first few entries, a change is assumed.
if ARGV[3] and ARGV[3] ~= '' then
  local newer = redis.call('XRANGE', k('outbox'), '(' .. ARGV[3], '+', 'COUNT', 8)
  local changed = #newer == 8
  for _, entry in ipairs(newer) do
    if #entry[2] == 2 then changed = true break end  -- {'d', JSON}: not quiet
  end
  if not changed then return {'ok', ''} end
end
local changed_only = ARGV[4] == '1'
local sweep = ARGV[6] or '0'
local astrologers, direct = {}, {}
local free_total = 0
local function read_row(aid, online)
  if not online then  -- the matcher drops it from the roster
    astrologers[#astrologers + 1] = {aid, 0, 0, 0, false, false, 0, false}
    return 0
  end
  local a = redis.call('HMGET', k('ast:' .. aid), 'weight', 'capacity', 'load', 'is_top',
                       'flow_enabled', 'idle')
  local capacity, load = tonumber(a[2]), tonumber(a[3] or '0')
  astrologers[#astrologers + 1] = {aid, tonumber(a[1]), capacity, load, a[4] == '1',
                                   a[5] == '1', tonumber(a[6] or '0'), true}
  return math.max(0, capacity - load)
end
local function read_direct(aid, free)
  local head = redis.call('ZRANGE', k('line:' .. aid), 0, free - 1, 'WITHSCORES')
  if #head > 0 then
    local items = {}
    for i = 1, #head, 2 do items[#items + 1] = {head[i], tonumber(head[i + 1]), {}} end
    direct[aid] = items
  end
  return #head
end
if changed_only then
  -- The rows the matcher holds are current but for these; the general line is read
  -- as far as their free slots and the changed rows' could take.
  free_total = tonumber(ARGV[5])
  local read = {}
  for _, aid in ipairs(redis.call('SMEMBERS', k('astdirty'))) do
    read[aid] = true
    free_total = free_total + read_row(aid, redis.call('SISMEMBER', k('online'), aid) == 1)
  end
  redis.call('DEL', k('astdirty'))
  -- The sweep: a few online astrologers read again each turn as if changed, so a
  -- row that a missed mark left stale is mended within one pass over the set. A
  -- free one the roster holds too counts twice towards the general line's limit:
  -- the line is then read a little further, which changes no decision.
  local count = tonumber(ARGV[7] or '0')
  if count > 0 then
    local scan = redis.call('SSCAN', k('online'), sweep, 'COUNT', count)
    sweep = scan[1]
    for _, aid in ipairs(scan[2]) do
      if not read[aid] then
        read[aid] = true
        local free = read_row(aid, true)
        free_total = free_total + free
        if free > 0 and redis.call('EXISTS', k('line:' .. aid)) == 1 then
          redis.call('SADD', k('directs'), aid)
        end
      end
    end
  end
  for _, aid in ipairs(redis.call('SMEMBERS', k('directs'))) do
    local a = redis.call('HMGET', k('ast:' .. aid), 'capacity', 'load')
    local free = tonumber(a[1] or '0') - tonumber(a[2] or '0')
    if redis.call('SISMEMBER', k('online'), aid) == 0 or free <= 0 then
      if redis.call('EXISTS', k('line:' .. aid)) == 0 then redis.call('SREM', k('directs'), aid) end
    elseif read_direct(aid, free) == 0 then
      redis.call('SREM', k('directs'), aid)
    end
  end
else
  redis.call('DEL', k('astdirty'))  -- every row is read now
  for _, aid in ipairs(redis.call('SMEMBERS', k('online'))) do
    local free = read_row(aid, true)
    if free > 0 then
      free_total = free_total + free
      if read_direct(aid, free) > 0 then redis.call('SADD', k('directs'), aid) end
    end
  end
end
local general = {}
local general_limit = 0
if free_total > 0 then
  general_limit = free_total + tonumber(ARGV[2])
  local head = redis.call('ZRANGE', k('line:general'), 0, general_limit - 1, 'WITHSCORES')
  for i = 1, #head, 2 do
    general[#general + 1] = {head[i], tonumber(head[i + 1]),
                             redis.call('SMEMBERS', k('excl:' .. head[i]))}
  end
end
local flow = redis.call('HMGET', k('flow'), 'top_flow', 'boost')
return {'ok', cjson.encode({astrologers = astrologers, general = general, direct = direct,
                            general_limit = general_limit, changed_only = changed_only,
                            sweep = sweep, online = redis.call('SCARD', k('online')),
                            top_flow = flow[1] or 'on', boost = tonumber(flow[2] or '2'),
                            stretch = redis.call('GET', k('stretch')) or ''})}
