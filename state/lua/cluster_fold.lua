-- Cluster layout (state/cluster_store.py): the owner of a slot commits a fold into the slot's own
-- hash tag. Like fold.lua, but the rows come from the slot's outbox in the control tag, read
-- before this step: the slot records how far it has folded that outbox (an absolute entry count,
-- the cursor), so a repeated or late fold is a no-op (the version compare-and-set), and the
-- outbox entries below the cursor may then be trimmed. Refused new series are not appended to
-- other slots' outboxes here (another hash tag): they are kept in the slot as the pending
-- overflow of this version, which cluster_overflow.lua delivers exactly once.
--
-- KEYS[1] = the slot's token copy, KEYS[2] = version, KEYS[3] = records, KEYS[4] = cursor,
-- KEYS[5] = the slot's active series for the tenant, KEYS[6] = pending overflow,
-- KEYS[7] = the tenants holding records in the slot
-- ARGV[1] = msgpack {token, version, cursor, new_cursor, limit, others, expired, held_change,
--                    overflow_slots, tenant}
--   others = the tenant's active series in the other slots (read just before: the limit is
--            exact for one folding owner, approximate while several fold at once)
-- ARGV[2..4] = as fold.lua (updates, created, overflow)
-- Returns {'OK', refused}, {'FENCED'} or {'STALE'}.

local args = cmsgpack.unpack(ARGV[1])
local token, version, cursor, new_cursor = args[1], args[2], args[3], args[4]
local limit, others, expired, held_change, overflow_slots = args[5], args[6], args[7], args[8], args[9]
if redis.call('GET', KEYS[1]) ~= token then
  return {'FENCED'}
end
if (redis.call('GET', KEYS[2]) or '0') ~= version or (redis.call('GET', KEYS[4]) or '0') ~= cursor then
  return {'STALE'}
end
local next_version = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[4], new_cursor)
redis.call('SADD', KEYS[7], args[10])

local CHUNK = 4000
local function each_chunk(items, command)
  for first = 1, #items, CHUNK do
    redis.call(command, KEYS[3], unpack(items, first, math.min(first + CHUNK - 1, #items)))
  end
end

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
local pending = {}
for index, rows in pairs(rows_by_slot) do
  pending[#pending + 1] = {overflow_slots[index], table.concat(rows)}
end
if #pending > 0 then
  redis.call('SET', KEYS[6], cmsgpack.pack({next_version, pending}))
else
  redis.call('DEL', KEYS[6])
end
return {'OK', refused}
