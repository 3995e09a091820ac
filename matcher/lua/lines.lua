-- lines.lua: every waiting request with its owner, for positions and `waiting` counts.
-- KEYS[1] match base
-- Returns JSON {general: [rid, uid, ...], direct: {aid: [rid, uid, ...]},
--   astrologers: [[aid, status, capacity, flow_enabled, is_top, weight]], top_flow, boost,
--   avg_ms}. Read-only.
local function with_owners(line)
  local rids = redis.call('ZRANGE', line, 0, -1)
  local out = {}
  -- In chunks: unpack() of a long line would overflow Lua's C stack (~8,000).
  for first = 1, #rids, 1000 do
    local last = math.min(first + 999, #rids)
    local owners = redis.call('HMGET', k('owner'), unpack(rids, first, last))
    for i = first, last do
      out[#out + 1] = rids[i]
      out[#out + 1] = owners[i - first + 1] or ''
    end
  end
  return out
end
local astrologers, direct = {}, {}
for _, aid in ipairs(redis.call('SMEMBERS', k('asts'))) do
  local a = redis.call('HMGET', k('ast:' .. aid), 'status', 'capacity', 'flow_enabled',
                       'is_top', 'weight', 'load')
  astrologers[#astrologers + 1] = {aid, a[1] or 'offline', tonumber(a[2] or '1'), a[3] == '1',
                                   a[4] == '1', tonumber(a[5] or '1'), tonumber(a[6] or '0')}
  if redis.call('EXISTS', k('line:' .. aid)) == 1 then
    direct[aid] = with_owners(k('line:' .. aid))
  end
end
local flow = redis.call('HMGET', k('flow'), 'top_flow', 'boost')
return cjson.encode({general = with_owners(k('line:general')), direct = direct,
                     astrologers = astrologers, top_flow = flow[1] or 'on',
                     boost = tonumber(flow[2] or '2'),
                     avg_ms = tonumber(redis.call('HGET', k('etaparams'), 'avg_ms') or '0'),
                     live = redis.call('HLEN', k('owner'))})
