-- timers.lua: ends what is due: offers not answered, graces run out, waits too long.
-- KEYS[1] match base
-- ARGV[1] fencing token  ARGV[2] missed offers before break
-- ARGV[3] most items of each kind to handle in this call
-- Returns {'ok', ms until the next due time (-1 = none), more (0|1)} or {'err', 'fenced' | 'unavailable'}.
if redis.call('GET', k('fence')) ~= ARGV[1] then return err('fenced') end
if not require_alive() then return err('unavailable') end
local now, max_missed, limit = clock_ms(), tonumber(ARGV[2]), tonumber(ARGV[3])
local more = 0

local due = redis.call('ZRANGEBYSCORE', k('deadline:offers'), '-inf', now, 'LIMIT', 0, limit)
if #due == limit then more = 1 end
for _, oid in ipairs(due) do
  local offer = hgetall(k('offer:' .. oid))
  if not offer.rid then
    redis.call('ZREM', k('deadline:offers'), oid)
  else
    local aid, rid = offer.aid, offer.rid
    local req = hgetall(k('req:' .. rid))
    close_offer(oid, offer, 'expired', now)
    add_load(aid, -1)
    emit(aid, {type = 'offer_expired', offer_id = oid})
    if req.user then
      if req.aid == '' then requeue(rid, req, aid)
      else end_request(rid, req, 'cancelled', 'timeout', now) end
    end
    local a = k('ast:' .. aid)
    local missed = redis.call('HINCRBY', a, 'missed', 1)
    if missed >= max_missed and redis.call('HGET', a, 'status') == 'online' then
      redis.call('HSET', a, 'missed', 0)
      set_status(aid, 'break', 'missed_offers', now)
      emit(aid, {type = 'status', status = 'break', reason = 'missed_offers'})
    end
  end
end

due = redis.call('ZRANGEBYSCORE', k('deadline:grace'), '-inf', now, 'LIMIT', 0, limit)
if #due == limit then more = 1 end
for _, uid in ipairs(due) do
  redis.call('ZREM', k('deadline:grace'), uid)
  if redis.call('HLEN', k('socks:' .. uid)) == 0 then
    local rid = redis.call('HGET', k('user:' .. uid), 'req')
    if rid then
      local req = hgetall(k('req:' .. rid))
      if req.user then
        if req.state == 'offered' then withdraw(req.offer, 'abandoned', now) end
        end_request(rid, req, 'cancelled', 'abandoned', now)
      end
    end
    local status = redis.call('HGET', k('ast:' .. uid), 'status')
    if status and status ~= 'offline' then go_offline(uid, 'disconnected', now) end
  end
end

due = redis.call('ZRANGEBYSCORE', k('deadline:wait'), '-inf', now, 'LIMIT', 0, limit)
if #due == limit then more = 1 end
for _, rid in ipairs(due) do
  local req = hgetall(k('req:' .. rid))
  if req.user then
    if req.state == 'offered' then withdraw(req.offer, 'cancelled', now) end
    end_request(rid, req, 'cancelled', 'timeout', now)
  else
    redis.call('ZREM', k('deadline:wait'), rid)
  end
end
flush()

local next_due = -1
for _, name in ipairs({'deadline:offers', 'deadline:grace', 'deadline:wait'}) do
  local first = redis.call('ZRANGE', k(name), 0, 0, 'WITHSCORES')
  if #first > 0 then
    local at = tonumber(first[2])
    if next_due < 0 or at < next_due then next_due = at end
  end
end
if next_due >= 0 then next_due = math.max(0, next_due - now) end
return {'ok', tostring(next_due), more}
