-- Cluster layout: what one outbox (a source partition's rows for one emission slot) holds past
-- the slot's cursor, read at one point in time with the outbox's base (entries trimmed so far)
-- and the source tag's epoch. A cursor into another epoch (the source tag lost its data and
-- started anew) counts from the start of this one; a cursor past the end (cannot happen within
-- an epoch) returns the whole outbox too.
--
-- KEYS[1] = the outbox (list), KEYS[2] = its base, KEYS[3] = the source tag's epoch
-- ARGV[1] = the slot's cursor into it: '<epoch>:<count>' ('' for none)
-- Returns {epoch, base, length, entries past the cursor}.

local epoch = redis.call('GET', KEYS[3]) or ''
local base = tonumber(redis.call('GET', KEYS[2]) or '0')
local length = redis.call('LLEN', KEYS[1])
local held, count = string.match(ARGV[1], '^(%d*):(%d+)$')
local cursor = 0
if held == epoch and count then
  cursor = tonumber(count)
end
local first = cursor - base
if first < 0 or first > length then
  first = 0
end
if first >= length then
  return {epoch, base, length, {}}
end
return {epoch, base, length, redis.call('LRANGE', KEYS[1], first, -1)}
