-- The owner of a slot commits a fold of the slot's delta log (state/fold.py decided it): new
-- and changed records, expired series, and the log entries folded, all in one atomic step and
-- only while the owner's fencing token is current and the slot's version is still the one the
-- fold read with the records and the log (a compare-and-set: a late or repeated fold, which
-- another fold has overtaken, writes nothing). Entries appended since the owner read the log
-- stay in it for the next fold.
--
-- ARGV[1] = msgpack {fence_key, slot, token, slot_key, log_key, active_key, folded, limit,
--                    expired, held_change, overflow_logs, version_key, version, parts_key}
--   expired       = {digest, ...}
--   held_change   = how the tenant's active-series count changes through held records
--                   (expired ones leave; a record gaining or losing a companion counter)
--   overflow_logs = log keys of the slots that receive refused new series
-- ARGV[2] = msgpack {digest, record, digest, record, ...}: held series whose record changed
-- ARGV[3] = msgpack {digest, record, ...}: new series, in order
-- ARGV[4] = msgpack {overflow_target, overflow_row, weight, ...} per new series;
--           overflow_target is a 0-based index into overflow_logs, or -1 for a series never
--           refused (an overflow series itself, or no limit); weight is how many active series
--           the record is (2 when it also stands for its companion counter)
-- ARGV[5] = msgpack {id, part, ...}: entries the new records' metas add to the slot's dictionary
--           of attribute parts (parts_key); an id already there means the fold read another
--           dictionary than the slot holds: nothing is written ('STALE')
-- (A few large arguments rather than one per series: the client encodes each one in Python.)
-- Returns {'OK', refused}: the 1-based positions of the new series the tenant's active-series
-- limit refused (their rows went to the overflow series' logs instead), {'FENCED'} or {'STALE'}
-- (the slot changed since the fold read it).

local args = cmsgpack.unpack(ARGV[1])
local fence_key, slot, token = args[1], args[2], args[3]
local slot_key, log_key, active_key = args[4], args[5], args[6]
local folded, limit, expired, held_change, overflow_logs = args[7], args[8], args[9], args[10], args[11]
local version_key, version = args[12], args[13]
if redis.call('HGET', fence_key, slot) ~= token then
  return {'FENCED'}
end
if (redis.call('GET', version_key) or '0') ~= version then
  return {'STALE'}
end
local parts_key, added = args[14], cmsgpack.unpack(ARGV[5] or '\144')
for n = 1, #added, 2 do
  if redis.call('HEXISTS', parts_key, added[n]) == 1 then
    return {'STALE'}
  end
end
redis.call('INCR', version_key)

local CHUNK = 4000  -- arguments per command, well below Lua's C stack limit
local function each_chunk(items, command, key)
  local total = 0
  for first = 1, #items, CHUNK do
    total = total + redis.call(command, key or slot_key, unpack(items, first, math.min(first + CHUNK - 1, #items)))
  end
  return total
end

each_chunk(added, 'HSET', parts_key)
each_chunk(cmsgpack.unpack(ARGV[2]), 'HSET')
each_chunk(expired, 'HDEL')
-- Exact: only the owner writes the slot's records, and it read them all at one point in time.
local active = tonumber(redis.call('GET', active_key) or '0') + held_change
if active < 0 then active = 0 end

-- New series are admitted in order while the tenant is under its limit; the rest go to the
-- overflow series (never refused themselves), whose rows are appended to their slots' logs.
local created = cmsgpack.unpack(ARGV[3])
local overflow = cmsgpack.unpack(ARGV[4])
local admitted, refused, rows_by_log = {}, {}, {}
for n = 1, #created / 2 do
  local target, weight = overflow[3 * n - 2], overflow[3 * n]
  if target < 0 or limit == 0 or active + weight <= limit then
    admitted[#admitted + 1] = created[2 * n - 1]
    admitted[#admitted + 1] = created[2 * n]
    active = active + weight
  else
    refused[#refused + 1] = n
    local rows = rows_by_log[target + 1]
    if rows == nil then
      rows = {}
      rows_by_log[target + 1] = rows
    end
    rows[#rows + 1] = overflow[3 * n - 1]
  end
end
each_chunk(admitted, 'HSET')
for index, rows in pairs(rows_by_log) do
  redis.call('RPUSH', overflow_logs[index], table.concat(rows))
end
redis.call('SET', active_key, active)
if folded > 0 then
  redis.call('LTRIM', log_key, folded, -1)
end
return {'OK', refused}
