-- lib.lua: shared helpers, prepended to every script when it is loaded.
--
-- KEYS[1] is the base key of the match slot ("<prefix>:{m}"); every key a
-- script touches is derived from it, so each script stays in one hash slot.
-- Keys (all "<base>:<name>"):
--   alive                 set once live state is complete; missing = Redis lost data
--   seq                   counter giving each request its place in a line
--   req:<rid>             hash: id user uname kind aid seq created state offer
--   excl:<rid>            set: astrologers this request is not offered to again
--   owner                 hash: rid -> user id, for every live request
--   line:general          zset: waiting general requests, score = seq
--   line:<aid>            zset: waiting direct requests of one astrologer
--   user:<uid>            hash: req=<rid> or sess=<sid> (at most one open item)
--   ast:<aid>             hash: name weight capacity is_top flow_enabled status load missed idle
--   asts / online         sets: every astrologer / those whose status is online
--   astdirty              set: astrologers whose snapshot row changed since the
--                         matcher last read the changes (snapshot.lua, ARGV[4])
--   directs               set: astrologers whose own line may hold requests
--   astoffers:<aid>       set of open offer ids;  astsess:<aid>  set of session ids
--   offer:<oid>           hash: rid aid direct created exp
--   offerdone:<oid>       the astrologer of an offer that has ended (1 h), for offer_expired
--   sess:<sid>            hash: rid user uname aid aname kind started
--   sessdone:<sid>        "<user> <aid>" of an ended session (1 h), for already_ended
--   deadline:offers|grace|wait   zsets of due times (ms)
--   socks:<uid>           hash: socket id -> gateway id
--   gws / gw:<gw> / gwsocks:<gw>  gateways, their heartbeat, their "<uid> <sock>" sockets
--   flow                  hash: top_flow boost
--   config                bumped by every admin change (flow, an astrologer); a rebuild watches it
--   stretch               string: the flow algorithm's state (JSON, opaque here)
--   etaparams             hash: avg_ms (session length EWMA), cap_general
--   fence                 the active matcher's fencing token
--   outbox                stream of committed transitions, persisted in order by the matcher
--
-- Every state change appends one outbox entry {pg, ev, m}: the rows to write to
-- PostgreSQL, the frames to publish once they are written, and metric hints.
-- Nothing is shown to a client before its transition is in PostgreSQL.

local BASE = KEYS[1]

-- Every time recorded comes from Redis' clock: scripts run one at a time, so
-- the record's times follow the order in which the transitions happened,
-- whichever process asked for them.
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function k(name) return BASE .. ':' .. name end

local OUT = {pg = {}, ev = {}, m = {}}
local function pg(op, row) OUT.pg[#OUT.pg + 1] = {op, row} end
-- sock: only that socket of the account gets the frame; op: the gateway's
-- handle for the frame it is applying (resolves its wait for the ack).
local function emit(uid, frame, sock, op)
  OUT.ev[#OUT.ev + 1] = {uid, frame, sock or '', op or ''}
end
local function metric(name, a, b) OUT.m[#OUT.m + 1] = {name, a or '', b or 0} end
-- Returns the entry's id, or nil when there was nothing to append. A quiet entry
-- ('q' field) records a change that no snapshot field sees (an accept: the offer's
-- slot becomes the session's), so the matcher takes no snapshot for it.
local function flush(quiet)
  if #OUT.pg + #OUT.ev + #OUT.m > 0 then
    if quiet then
      return redis.call('XADD', k('outbox'), '*', 'd', cjson.encode(OUT), 'q', '1')
    end
    return redis.call('XADD', k('outbox'), '*', 'd', cjson.encode(OUT))
  end
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function err(code) return {'err', code} end

local function require_alive()
  return redis.call('EXISTS', k('alive')) == 1
end

local function ack(uid, sock, op, ref, fields)
  local frame = fields or {}
  frame.type = 'ack'
  frame.ref = cjson.decode(ref)
  emit(uid, frame, sock, op)
end

local function line_of(req)
  if req.aid == '' then return k('line:general') end
  return k('line:' .. req.aid)
end

-- 1 + the number of requests ahead of it in its line that still wait.
local function position_of(req)
  return redis.call('ZCOUNT', line_of(req), '-inf', '(' .. req.seq) + 1
end

local function eta_of(req, position)
  local params = hgetall(k('etaparams'))
  local avg_ms = tonumber(params.avg_ms or '300000')
  local cap = 0
  if req.aid == '' then
    cap = tonumber(params.cap_general or '0')
  else
    local a = hgetall(k('ast:' .. req.aid))
    if a.status == 'online' then cap = tonumber(a.capacity) end
  end
  if cap <= 0 then return cjson.null end
  return math.ceil(position / cap) * avg_ms / 1000
end

-- The matcher keeps the roster between snapshots and reads only the rows that
-- changed: every change to a field snapshot.lua reads (weight, capacity, load,
-- is_top, flow_enabled, idle, online) marks its astrologer.
local function touch(aid) redis.call('SADD', k('astdirty'), aid) end

local function add_load(aid, delta)
  redis.call('HINCRBY', k('ast:' .. aid), 'load', delta)
  touch(aid)
end

-- Into its line at its place (seq).
local function enqueue_request(rid, req)
  redis.call('ZADD', line_of(req), req.seq, rid)
  if req.aid ~= '' then redis.call('SADD', k('directs'), req.aid) end
end

-- Removes a live request everywhere and records how it ended.
local function end_request(rid, req, state, reason, now)
  redis.call('ZREM', line_of(req), rid)
  redis.call('DEL', k('req:' .. rid), k('excl:' .. rid))
  redis.call('HDEL', k('owner'), rid)
  redis.call('ZREM', k('deadline:wait'), rid)
  redis.call('HDEL', k('user:' .. req.user), 'req')
  pg('req_end', {id = rid, state = state, reason = reason, at = now})
  metric('gone', rid)
  if state == 'cancelled' then
    emit(req.user, {type = 'cancelled', request_id = rid, reason = reason})
    metric('req', 'cancelled_' .. reason)
  else
    metric('req', state)
  end
end

-- Back to its line at its old place (its seq), no longer under offer.
local function requeue(rid, req, excluded_aid)
  redis.call('HSET', k('req:' .. rid), 'state', 'waiting', 'offer', '')
  enqueue_request(rid, req)
  if excluded_aid then redis.call('SADD', k('excl:' .. rid), excluded_aid) end
end

local function close_offer(oid, offer, outcome, now)
  redis.call('DEL', k('offer:' .. oid))
  redis.call('ZREM', k('deadline:offers'), oid)
  redis.call('SREM', k('astoffers:' .. offer.aid), oid)
  redis.call('SET', k('offerdone:' .. oid), offer.aid, 'PX', 3600000)
  pg('offer_end', {id = oid, outcome = outcome, at = now})
  metric('offer', outcome)
  if outcome == 'accepted' or outcome == 'declined' then
    metric('resp', '', now - tonumber(offer.created))
  end
end

-- The user cancelled, was abandoned or timed out while an offer was open.
local function withdraw(oid, reason, now)
  local offer = hgetall(k('offer:' .. oid))
  if not offer.rid then return end
  close_offer(oid, offer, 'withdrawn', now)
  add_load(offer.aid, -1)
  emit(offer.aid, {type = 'offer_withdrawn', offer_id = oid, reason = reason})
end

local function set_status(aid, status, reason, now)
  redis.call('HSET', k('ast:' .. aid), 'status', status)
  touch(aid)
  if status == 'online' then
    redis.call('SADD', k('online'), aid)
  else
    redis.call('SREM', k('online'), aid)
  end
  pg('status', {aid = aid, status = status, reason = reason, at = now})
end

-- SPEC §5: offline (by choice or after the grace): open offers go back to the
-- head of their lines, the astrologer's own line is cancelled.
local function go_offline(aid, reason, now)
  set_status(aid, 'offline', reason, now)
  for _, oid in ipairs(redis.call('SMEMBERS', k('astoffers:' .. aid))) do
    local offer = hgetall(k('offer:' .. oid))
    if offer.rid then
      local req = hgetall(k('req:' .. offer.rid))
      close_offer(oid, offer, 'returned', now)
      add_load(aid, -1)
      emit(aid, {type = 'offer_withdrawn', offer_id = oid, reason = 'astrologer_offline'})
      if req.user then
        if req.aid == '' then
          requeue(offer.rid, req, nil)
        else
          end_request(offer.rid, req, 'cancelled', 'astrologer_offline', now)
        end
      end
    end
  end
  for _, rid in ipairs(redis.call('ZRANGE', k('line:' .. aid), 0, -1)) do
    local req = hgetall(k('req:' .. rid))
    if req.user then end_request(rid, req, 'cancelled', 'astrologer_offline', now) end
  end
end

local function offer_frame(oid, offer, now)
  local req = hgetall(k('req:' .. offer.rid))
  return {
    type = 'offer', offer_id = oid, request_id = offer.rid, kind = req.kind,
    direct = offer.direct == '1', user = {id = req.user, name = req.uname},
    expires_in = math.max(0, tonumber(offer.exp) - now) / 1000,
  }
end

-- What a (re)connecting client needs to resume (SPEC §4 `ready`).
local function client_state(uid, role, now)
  if role == 'user' then
    local open = hgetall(k('user:' .. uid))
    local state = {request = cjson.null, session = cjson.null}
    if open.req then
      local req = hgetall(k('req:' .. open.req))
      if req.user then
        local position = position_of(req)
        local aid = cjson.null
        if req.aid ~= '' then aid = req.aid end
        state.request = {request_id = open.req, kind = req.kind, astrologer_id = aid,
                         position = position, eta_seconds = eta_of(req, position)}
      end
    end
    if open.sess then
      local s = hgetall(k('sess:' .. open.sess))
      if s.rid then
        state.session = {session_id = open.sess, request_id = s.rid,
                         astrologer = {id = s.aid, name = s.aname}}
      end
    end
    return state
  elseif role == 'astrologer' then
    local a = hgetall(k('ast:' .. uid))
    local offers, sessions = {}, {}
    for _, oid in ipairs(redis.call('SMEMBERS', k('astoffers:' .. uid))) do
      local offer = hgetall(k('offer:' .. oid))
      if offer.rid then offers[#offers + 1] = offer_frame(oid, offer, now) end
    end
    for _, sid in ipairs(redis.call('SMEMBERS', k('astsess:' .. uid))) do
      local s = hgetall(k('sess:' .. sid))
      if s.rid then
        sessions[#sessions + 1] = {session_id = sid, request_id = s.rid,
                                   user = {id = s.user, name = s.uname}}
      end
    end
    return {status = a.status or 'offline', offers = offers, sessions = sessions,
            waiting = {direct = redis.call('ZCARD', k('line:' .. uid)),
                       general = redis.call('ZCARD', k('line:general'))}}
  end
  return {}
end
