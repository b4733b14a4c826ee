-- Shared helpers, prepended to each script. Lua numbers are doubles; every count and time here
-- stays below 2^53 (times are microseconds).

local function shift(index, change)
  -- arithmetic right shift (floor division by 2^change), also for negative indexes
  if change <= 0 then return index end
  return math.floor(index / (2 ^ change))
end

local function add_buckets(current, delta)
  if #delta == 0 then return current end
  if #current ~= #delta then
    -- the bucket layout changed (reconfigured bounds): restart from the delta
    local copy = {}
    for i = 1, #delta do copy[i] = delta[i] end
    return copy
  end
  for i = 1, #delta do current[i] = current[i] + delta[i] end
  return current
end

-- exponential histogram state: {scale, zero_count, offset, counts, count, sum, min, max}
local function exp_merge(a, b, max_size)
  if #b == 0 then return a end
  if #a == 0 then return b end
  local a_has, b_has = #a[4] > 0, #b[4] > 0
  local scale
  if a_has and b_has then scale = math.min(a[1], b[1])
  elseif a_has then scale = a[1]
  elseif b_has then scale = b[1]
  else scale = math.min(a[1], b[1]) end
  local lo, hi = nil, nil
  for _, st in ipairs({a, b}) do
    if #st[4] > 0 then
      local change = st[1] - scale
      local l = shift(st[3], change)
      local h = shift(st[3] + #st[4] - 1, change)
      if lo == nil or l < lo then lo = l end
      if hi == nil or h > hi then hi = h end
    end
  end
  local counts = {}
  if lo ~= nil then
    while hi - lo + 1 > max_size do
      scale = scale - 1
      lo = shift(lo, 1)
      hi = shift(hi, 1)
    end
    for i = 1, hi - lo + 1 do counts[i] = 0 end
    for _, st in ipairs({a, b}) do
      local change = st[1] - scale
      for i, c in ipairs(st[4]) do
        local slot = shift(st[3] + i - 1, change) - lo + 1
        counts[slot] = counts[slot] + c
      end
    end
  end
  local min, max = a[7], a[8]
  if b[7] ~= nil and (min == nil or b[7] < min) then min = b[7] end
  if b[8] ~= nil and (max == nil or b[8] > max) then max = b[8] end
  return {scale, a[2] + b[2], lo or 0, counts, a[5] + b[5], a[6] + b[6], min, max}
end

local function exp_subtract(current, snapshot)
  if #snapshot == 0 or #current == 0 then return current end
  local change = snapshot[1] - current[1]
  local counts = current[4]
  for i, c in ipairs(snapshot[4]) do
    local slot = shift(snapshot[3] + i - 1, change) - current[3] + 1
    if counts[slot] ~= nil then counts[slot] = counts[slot] - c end
  end
  current[2] = current[2] - snapshot[2]
  current[5] = current[5] - snapshot[5]
  current[6] = current[6] - snapshot[6]
  return current
end
