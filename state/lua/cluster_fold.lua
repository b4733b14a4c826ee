-- Cluster layout (state/cluster_store.py): the owner of a slot commits a fold into the slot's own
-- hash tag. Like fold.lua, but the rows come from the outboxes every input partition keeps for
-- this slot (under the partitions' tags), pulled before this step: the slot records, per source
-- partition, how far it has folded that partition's outbox (an absolute entry count, the cursor),
-- so a repeated or late fold is a no-op (the version compare-and-set), and the outbox entries
-- below the cursor may then be trimmed. Refused new series go to the overflow series' slots
-- through this slot's own outboxes (index slot = input partition: the same tag), in this step.
--
-- KEYS[1] = the slot's token copy, KEYS[2] = version, KEYS[3] = records, KEYS[4] = cursors
-- (hash: source partition -> count), KEYS[5] = the slot's active series for the tenant,
-- KEYS[6] = the tenants with keys under the tag, KEYS[7] = the tag's epoch (cluster_merge.lua),
-- KEYS[8] = the tenant's resources under the tag, KEYS[9] = the slot's dictionary of attribute
-- parts, KEYS[10..] = the outboxes of overflow_slots
--   cursors = {source, '<epoch>:<count>', ...}: the new cursors
-- ARGV[1] = msgpack {token, version, cursors, limit, others, expired, held_change, tenant}
--   others = the tenant's active series in the other slots (read just before: the limit is
--            exact for one folding owner, approximate while several fold at once)
-- ARGV[2..4] = as fold.lua (updates, created, overflow)
-- ARGV[5] = msgpack {resource_id, attributes, ...}: the new series' resources, kept here too
--   (a copy; the same id has the same attributes) so that the slot's series keep them when the
--   tags of the partitions they came through lose their data
-- ARGV[6] = msgpack {id, part, ...}: entries added to the dictionary of parts (as fold.lua)
-- Returns {'OK', refused}, {'FENCED'} or {'STALE'}.

local args = cmsgpack.unpack(ARGV[1])
local token, version, cursors = args[1], args[2], args[3]
local limit, others, expired, held_change = args[4], args[5], args[6], args[7]
if redis.call('GET', KEYS[1]) ~= token then
  return {'FENCED'}
end
if (redis.call('GET', KEYS[2]) or '0') ~= version then
  return {'STALE'}
end
local added = cmsgpack.unpack(ARGV[6] or '\144')
for n = 1, #added, 2 do
  if redis.call('HEXISTS', KEYS[9], added[n]) == 1 then
    return {'STALE'}
  end
end
redis.call('INCR', KEYS[2])
if #cursors > 0 then
  redis.call('HSET', KEYS[4], unpack(cursors))
end
redis.call('SADD', KEYS[6], args[8])

local CHUNK = 4000
local function each_chunk(items, command, key)
  for first = 1, #items, CHUNK do
    redis.call(command, key or KEYS[3], unpack(items, first, math.min(first + CHUNK - 1, #items)))
  end
end

each_chunk(added, 'HSET', KEYS[9])
each_chunk(cmsgpack.unpack(ARGV[2]), 'HSET')
each_chunk(expired, 'HDEL')
local own = tonumber(redis.call('GET', KEYS[5]) or '0') + held_change
if own < 0 then own = 0 end

local created = cmsgpack.unpack(ARGV[3])
local overflow = cmsgpack.unpack(ARGV[4])
local admitted, refused, rows_by_slot = {}, {}, {}
for n = 1, #created / 2 do
  local target, weight = overflow[3 * n - 2], overflow[3 * n]
  if target < 0 or limit == 0 or own + others + weight <= limit then
    admitted[#admitted + 1] = created[2 * n - 1]
    admitted[#admitted + 1] = created[2 * n]
    own = own + weight
  else
    refused[#refused + 1] = n
    local rows = rows_by_slot[target + 1]
    if rows == nil then
      rows = {}
      rows_by_slot[target + 1] = rows
    end
    rows[#rows + 1] = overflow[3 * n - 1]
  end
end
each_chunk(admitted, 'HSET')
redis.call('SET', KEYS[5], own)
for index, rows in pairs(rows_by_slot) do
  if redis.call('EXISTS', KEYS[7]) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', KEYS[7], now[1] .. string.format('%06d', tonumber(now[2])))
  end
  redis.call('RPUSH', KEYS[9 + index], table.concat(rows))
end
local copies = cmsgpack.unpack(ARGV[5])
for n = 1, #copies, 2 do
  redis.call('HSETNX', KEYS[8], copies[n], copies[n + 1])
end
return {'OK', refused}
