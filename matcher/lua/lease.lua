-- lease.lua: take or keep the matcher lease.
-- KEYS[1] match base
-- ARGV[1] this matcher's id  ARGV[2] lease length (ms)
-- Returns {held (0|1), fencing token}. A new holder gets a new, larger token;
-- every matcher script checks it, so a matcher paused past its lease that
-- wakes up can no longer write a decision.
local me, ttl = ARGV[1], ARGV[2]
local holder = redis.call('GET', k('lease'))
if holder == me then
  redis.call('PEXPIRE', k('lease'), ttl)
  return {1, redis.call('GET', k('fence')) or ''}
end
if holder then return {0, ''} end
redis.call('SET', k('lease'), me, 'PX', ttl)
if redis.call('EXISTS', k('fencectr')) == 0 then
  -- Redis lost its data: start above any token handed out before, so a
  -- matcher holding an old token can never match a new one. In microseconds:
  -- at least one passes between the script that gave the old token and this
  -- one, and takeovers are far rarer than one a microsecond. (Milliseconds let a
  -- lease taken within the millisecond of the loss get the old token again.)
  local t = redis.call('TIME')
  redis.call('SET', k('fencectr'), t[1] .. string.format('%06d', tonumber(t[2])))
end
-- %d: tostring() would print a number this large with an exponent.
local token = string.format('%d', redis.call('INCR', k('fencectr')))
redis.call('SET', k('fence'), token)
return {1, token}
