-- Omiro's shared state in Redis. Every operation that must be atomic is one
-- call of this script (EVALSHA), so no other client runs in between.
--
-- ARGV[1] operation, ARGV[2] key prefix, ARGV[3] clock offset in seconds
-- (0 outside tests), ARGV[4] this server's id, ARGV[5] life of live records
-- in seconds; the operation's own arguments follow from ARGV[6].
--
-- Time is Redis's TIME, never a server's clock. Durations that decide a
-- rule (cooldowns, blocks, windows) are stored as their end time and
-- compared with TIME; every key also has a TTL a little longer than what it
-- describes, so nothing outlives its use. The one exception: a permanent
-- ban (P.."ban:"..target without an end) and the index of bans (P.."bans")
-- are kept until an operator lifts them.
--
-- Keys (P = prefix):
--   P.."s:"..sid       hash   a live socket: server, client (address group)
--   P.."srv:"..server  set    the sessions a server holds
--   P.."sk:"..server   hash   client -> open sockets this server reserved for it (sockets_per_ip)
--   P.."servers"       zset   server -> last heartbeat (TIME)
--   P.."dead:"..server string  a server the sweep took for dead; it may not act until it beats
--   P.."boot"          string this Redis's incarnation (gone after an empty restart, or
--                             when no server has beaten for the life of live records)
--   P.."w:"..sid       hash   a waiting entry: mode, ints, since, ticket, widened, req
--   P.."q:"..mode..":"..interest  zset  sid -> entry order ("" interest: the general queue)
--   P.."waiting"       set    waiting sessions (for stats)
--   P.."m:"..sid       hash   the match a session is in: id, caller, callee, mode, common
--   P.."le:"..sid      hash   the last match a leave ended (answers a retried leave)
--   P.."cd:"..pair     string rematch cooldown end
--   P.."bl:"..pair     string block end (a pair of sessions)
--   P.."blc:"..pair    string block end (a pair of clients)
--   P.."rl:"..key      hash   rate-limit window: start, count
--   P.."rep:"..ip      zset   reporter ip -> when, for autobans
--   P.."seq"           string counter for tickets and queue order
--   P.."bans"          zset   banned target -> when; P.."ban:"..target the ban (JSON)
--   P.."reports"       zset   report id -> "size|JSON"; P.."report_bytes", P.."report_id"

local op, P, offset, me = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local LIVE_MS = math.floor(tonumber(ARGV[5]) * 1000)
local SCAN_LIMIT = 256
local GRACE_MS = 1000

local t = redis.call('TIME')
local NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000 + offset

local function fmt(x)
  return string.format('%.6f', x)
end

local function ms(seconds)
  return math.max(1, math.ceil(seconds * 1000)) + GRACE_MS
end

local function live(key)
  redis.call('PEXPIRE', key, LIVE_MS)
end

local function pair(a, b)
  if a < b then return a .. '|' .. b end
  return b .. '|' .. a
end

local function qkey(mode, name)
  return P .. 'q:' .. mode .. ':' .. name
end

local function hash(key)
  local h = redis.call('HGETALL', key)
  if #h == 0 then return nil end
  local r = {}
  for i = 1, #h, 2 do r[h[i]] = h[i + 1] end
  return r
end

local function entry(sid)
  return hash(P .. 'w:' .. sid)
end

local function match_of(sid)
  local m = hash(P .. 'm:' .. sid)
  if not m then return nil end
  return {'match', m.id, m.caller, m.callee, m.mode, m.common}
end

local function server_alive(server, dead_after)
  local beat = redis.call('ZSCORE', P .. 'servers', server)
  return beat and tonumber(beat) > NOW - dead_after
end

local function queues_of(w)
  local names = cjson.decode(w.ints)
  if w.widened == '1' then table.insert(names, '') end
  return names
end

local function unqueue(sid, w)
  for _, name in ipairs(queues_of(w)) do
    redis.call('ZREM', qkey(w.mode, name), sid)
  end
  redis.call('DEL', P .. 'w:' .. sid)
  redis.call('SREM', P .. 'waiting', sid)
end

local function seq()
  local n = redis.call('INCR', P .. 'seq')
  live(P .. 'seq')
  return n
end

local function enqueue(sid, mode, name)
  local q = qkey(mode, name)
  redis.call('ZADD', q, seq(), sid)
  live(q)
end

local function client_of(sid)
  local client = redis.call('HGET', P .. 's:' .. sid, 'client')
  if client == '' then return false end
  return client
end

-- Blocked: the pair of sessions, or (both live, from different clients) their clients.
local function blocked(sid, client, other)
  local ends = redis.call('GET', P .. 'bl:' .. pair(sid, other))
  if ends and tonumber(ends) > NOW then return true end
  if not client then return false end
  local theirs = client_of(other)
  if not theirs or theirs == client then return false end
  ends = redis.call('GET', P .. 'blc:' .. pair(client, theirs))
  return ends and tonumber(ends) > NOW
end

-- The oldest available partner in the named queues; a recent partner only
-- when nobody else is available. At most SCAN_LIMIT entries per queue.
local function find(sid, mode, names)
  local client = client_of(sid)
  local fresh, fresh_since, recent, recent_since
  for _, name in ipairs(names) do
    local q = qkey(mode, name)
    for _, other in ipairs(redis.call('ZRANGE', q, 0, SCAN_LIMIT - 1)) do
      if other ~= sid then
        local since = redis.call('HGET', P .. 'w:' .. other, 'since')
        if not since then
          redis.call('ZREM', q, other) -- its entry expired: drop the stale member
        else
          since = tonumber(since)
          if not blocked(sid, client, other) then
            local cooldown = redis.call('GET', P .. 'cd:' .. pair(sid, other))
            if cooldown and tonumber(cooldown) > NOW then
              if recent == nil or since < recent_since then
                recent, recent_since = other, since
              end
            else
              if fresh == nil or since < fresh_since then
                fresh, fresh_since = other, since
              end
              break -- queues are oldest first: the rest of this one is younger
            end
          end
        end
      end
    end
  end
  return fresh or recent
end

local function store_match(sid, id, caller, callee, mode, common)
  local key = P .. 'm:' .. sid
  redis.call('HSET', key, 'id', id, 'caller', caller, 'callee', callee, 'mode', mode,
    'common', common)
  live(key)
end

local function form(waiter, joiner, joiner_ints, joiner_since, id)
  local w = entry(waiter)
  unqueue(waiter, w)
  local theirs = {}
  for _, i in ipairs(cjson.decode(w.ints)) do theirs[i] = true end
  local common = {}
  for _, i in ipairs(joiner_ints) do
    if theirs[i] then table.insert(common, i) end
  end
  local caller, callee = waiter, joiner
  if joiner_since and tonumber(w.since) > joiner_since then
    caller, callee = joiner, waiter
  end
  local encoded = #common > 0 and cjson.encode(common) or '[]'
  store_match(caller, id, caller, callee, w.mode, encoded)
  store_match(callee, id, caller, callee, w.mode, encoded)
  return {'match', id, caller, callee, w.mode, encoded}
end

local function end_match(m, cooldown_s)
  redis.call('DEL', P .. 'm:' .. m[3], P .. 'm:' .. m[4])
  if cooldown_s > 0 then
    redis.call('SET', P .. 'cd:' .. pair(m[3], m[4]), fmt(NOW + cooldown_s), 'PX', ms(cooldown_s))
  end
end

-- Become idle; return the ended match, if any. A retried leave (same req)
-- answers what the first one did.
local function leave(sid, cooldown_s, req)
  local lekey = P .. 'le:' .. sid
  local last = hash(lekey)
  if last and last.req == req then
    return {'match', last.id, last.caller, last.callee, last.mode, last.common}
  end
  local w = entry(sid)
  if w then
    unqueue(sid, w)
    return false
  end
  local m = match_of(sid)
  if not m then return false end
  end_match(m, cooldown_s)
  redis.call('DEL', lekey)
  redis.call('HSET', lekey, 'req', req, 'id', m[2], 'caller', m[3], 'callee', m[4], 'mode', m[5],
    'common', m[6])
  redis.call('PEXPIRE', lekey, 60000)
  return m
end

local function forget_session(sid, server)
  redis.call('DEL', P .. 's:' .. sid)
  redis.call('SREM', P .. 'srv:' .. server, sid)
end

local A = {}
for i = 6, #ARGV do A[#A + 1] = ARGV[i] end

-- A server the others swept (silent too long, e.g. starved) may not change
-- matching state until its next heartbeat re-registers it and it resyncs.
local FENCED = {join = true, widen = true, leave = true, release = true, claim = true,
  reserve = true}
if FENCED[op] and redis.call('EXISTS', P .. 'dead:' .. me) == 1 then
  return redis.error_reply('SWEPT this server was taken for dead; it re-registers at its heartbeat')
end

if op == 'join' then
  -- sid, mode, interests (JSON list), interest timeout, match id
  local sid, mode, ints_json, timeout, id = A[1], A[2], A[3], tonumber(A[4]), A[5]
  local m = match_of(sid)
  if m then
    if m[2] == id then return m end -- a retry of this very join
    return redis.error_reply('NOTIDLE session is matched')
  end
  local w = entry(sid)
  if w then
    if w.req == id then return {'wait', w.ticket, w.widen_after} end
    return redis.error_reply('NOTIDLE session is waiting')
  end
  local ints = cjson.decode(ints_json)
  local widen_now = #ints == 0 or timeout <= 0
  local names = {}
  for _, i in ipairs(ints) do names[#names + 1] = i end
  if widen_now then names[#names + 1] = '' end
  local partner = find(sid, mode, names)
  if partner then return form(partner, sid, ints, nil, id) end
  local ticket = seq()
  local widen_after = widen_now and '-1' or fmt(timeout)
  local key = P .. 'w:' .. sid
  redis.call('HSET', key, 'mode', mode, 'ints', ints_json, 'since', fmt(NOW), 'ticket', ticket,
    'widened', widen_now and '1' or '0', 'req', id, 'widen_after', widen_after)
  live(key)
  for _, name in ipairs(names) do enqueue(sid, mode, name) end
  redis.call('SADD', P .. 'waiting', sid)
  live(P .. 'waiting')
  return {'wait', tostring(ticket), widen_after}

elseif op == 'widen' then
  -- sid, ticket, match id
  local sid, ticket, id = A[1], A[2], A[3]
  local m = match_of(sid)
  if m and m[2] == id then return m end
  local w = entry(sid)
  if not w or w.ticket ~= ticket or w.widened == '1' then return false end
  local partner = find(sid, w.mode, {''})
  if partner then
    unqueue(sid, w)
    return form(partner, sid, cjson.decode(w.ints), tonumber(w.since), id)
  end
  redis.call('HSET', P .. 'w:' .. sid, 'widened', '1')
  enqueue(sid, w.mode, '')
  return false

elseif op == 'leave' then
  -- sid, cooldown, request id
  return leave(A[1], tonumber(A[2]), A[3])

elseif op == 'release' then
  -- sid, cooldown, request id
  local sid = A[1]
  local ended = leave(sid, tonumber(A[2]), A[3])
  if redis.call('HGET', P .. 's:' .. sid, 'server') == me then forget_session(sid, me) end
  return ended

elseif op == 'claim' then
  -- sid, ip, dead_after
  local sid, client = A[1], A[2]
  local key = P .. 's:' .. sid
  local holder = redis.call('HGET', key, 'server')
  if holder then
    -- Held here or by a live server; or its server died and the sweep has
    -- not freed it yet (the sweep also tells its partner).
    return 0
  end
  redis.call('HSET', key, 'server', me, 'client', client)
  live(key)
  redis.call('SADD', P .. 'srv:' .. me, sid)
  live(P .. 'srv:' .. me)
  return 1

elseif op == 'reserve' then
  -- client, limit: one of the client's open sockets, counted over every
  -- registered server (a dead one's until the sweep frees them)
  local client, limit = A[1], tonumber(A[2])
  local taken = 0
  for _, server in ipairs(redis.call('ZRANGE', P .. 'servers', 0, -1)) do
    taken = taken + (tonumber(redis.call('HGET', P .. 'sk:' .. server, client)) or 0)
  end
  if taken >= limit then return 0 end
  local key = P .. 'sk:' .. me
  redis.call('HINCRBY', key, client, 1)
  live(key)
  return 1

elseif op == 'unreserve' then
  -- client: give back one of its sockets reserved here
  local key = P .. 'sk:' .. me
  if redis.call('HINCRBY', key, A[1], -1) <= 0 then redis.call('HDEL', key, A[1]) end
  return 1

elseif op == 'sockets' then
  -- client, count, ...: every socket this server holds, as it counts them
  -- (replaces what Redis has: repairs a lost reply, restores an empty restart)
  local key = P .. 'sk:' .. me
  redis.call('DEL', key)
  for i = 1, #A, 2 do redis.call('HSET', key, A[i], A[i + 1]) end
  if #A > 0 then live(key) end
  return 1

elseif op == 'block' then
  -- a, b, block ttl
  local ttl = tonumber(A[3])
  redis.call('SET', P .. 'bl:' .. pair(A[1], A[2]), fmt(NOW + ttl), 'PX', ms(ttl))
  local a, b = client_of(A[1]), client_of(A[2])
  if a and b and a ~= b then -- a client is never blocked from itself
    redis.call('SET', P .. 'blc:' .. pair(a, b), fmt(NOW + ttl), 'PX', ms(ttl))
  end
  return 1

elseif op == 'rate' then
  -- key, limit, window
  local key, limit, window = P .. 'rl:' .. A[1], tonumber(A[2]), tonumber(A[3])
  local h = redis.call('HMGET', key, 'start', 'count')
  local start, count = tonumber(h[1]), tonumber(h[2])
  if not start or NOW - start >= window then start, count = NOW, 0 end
  if count >= limit then return fmt(math.max(0, start + window - NOW)) end
  redis.call('HSET', key, 'start', fmt(start), 'count', count + 1)
  redis.call('PEXPIRE', key, ms(start + window - NOW))
  return false

elseif op == 'reporter' then
  -- reported ip, reporter ip, window
  local key, window = P .. 'rep:' .. A[1], tonumber(A[3])
  redis.call('ZADD', key, fmt(NOW), A[2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(NOW - window))
  redis.call('PEXPIRE', key, ms(window))
  return redis.call('ZCARD', key)

elseif op == 'publish' then
  -- sid, message: one PUBLISH to the channel of the server holding sid
  local holder = redis.call('HGET', P .. 's:' .. A[1], 'server')
  if not holder then return 0 end
  return redis.call('PUBLISH', P .. 'bus:' .. holder, A[2])

elseif op == 'stats' then
  -- dead_after
  local online = 0
  local servers = redis.call('ZRANGEBYSCORE', P .. 'servers', '(' .. fmt(NOW - tonumber(A[1])), '+inf')
  for _, server in ipairs(servers) do
    online = online + redis.call('SCARD', P .. 'srv:' .. server)
  end
  return {online, redis.call('SCARD', P .. 'waiting')}

elseif op == 'heartbeat' then
  -- a fresh incarnation id (used if this Redis has none)
  local added = redis.call('ZADD', P .. 'servers', fmt(NOW), me)
  if redis.call('DEL', P .. 'dead:' .. me) == 1 then added = 1 end
  live(P .. 'servers')
  for _, own in ipairs({P .. 'srv:' .. me, P .. 'sk:' .. me}) do
    if redis.call('EXISTS', own) == 1 then live(own) end
  end
  local boot = redis.call('GET', P .. 'boot')
  if not boot then
    boot = A[1]
    redis.call('SET', P .. 'boot', boot)
  end
  live(P .. 'boot')
  if redis.call('EXISTS', P .. 'seq') == 1 then live(P .. 'seq') end
  return {added, boot}

elseif op == 'register' then
  -- a new server id: registered only if no server has it
  local added = redis.call('ZADD', P .. 'servers', 'NX', fmt(NOW), me)
  live(P .. 'servers')
  return added

elseif op == 'unregister' then
  -- a clean stop: look dead at once, so the next sweep frees what is left
  if redis.call('ZSCORE', P .. 'servers', me) then
    redis.call('ZADD', P .. 'servers', 0, me)
  end
  return 1

elseif op == 'add_ban' then
  -- target, ban (JSON), until in unix ms or ""
  local key = P .. 'ban:' .. A[1]
  redis.call('SET', key, A[2])
  if A[3] ~= '' then redis.call('PEXPIREAT', key, tonumber(A[3]) + GRACE_MS) end
  redis.call('ZADD', P .. 'bans', fmt(NOW), A[1])
  return 1

elseif op == 'remove_ban' then
  redis.call('ZREM', P .. 'bans', A[1])
  return redis.call('DEL', P .. 'ban:' .. A[1])

elseif op == 'bans' then
  -- every ban kept, newest first (expired ones are dropped from the index)
  local out = {}
  for _, target in ipairs(redis.call('ZREVRANGE', P .. 'bans', 0, -1)) do
    local ban = redis.call('GET', P .. 'ban:' .. target)
    if ban then out[#out + 1] = ban else redis.call('ZREM', P .. 'bans', target) end
  end
  return out

elseif op == 'report' then
  -- report (JSON), its size, the store's bound in bytes, how long to keep it (s)
  local key, bytes, size = P .. 'reports', P .. 'report_bytes', tonumber(A[2])
  local id = redis.call('INCR', P .. 'report_id')
  redis.call('ZADD', key, id, A[2] .. '|' .. A[1])
  local total = redis.call('INCRBY', bytes, size)
  while total > tonumber(A[3]) do -- the oldest go first
    local oldest = redis.call('ZPOPMIN', key)
    if #oldest == 0 then break end
    total = redis.call('DECRBY', bytes, tonumber(string.match(oldest[1], '^(%d+)|')))
  end
  for _, k in ipairs({key, bytes, P .. 'report_id'}) do redis.call('PEXPIRE', k, ms(tonumber(A[4]))) end
  return id

elseif op == 'reports' then
  -- limit, before ("" for none): {id, JSON, ...} newest first
  local top = A[2] == '' and '+inf' or '(' .. A[2]
  local page = redis.call('ZREVRANGEBYSCORE', P .. 'reports', top, '-inf', 'WITHSCORES', 'LIMIT', 0,
    tonumber(A[1]))
  local out = {}
  for i = 1, #page, 2 do
    out[#out + 1] = page[i + 1]
    out[#out + 1] = string.match(page[i], '^%d+|(.*)$')
  end
  return out

elseif op == 'sweep' then
  -- dead_after, cooldown: forget servers without a heartbeat; return
  -- {sid, match...} for each of their sessions whose match this ended
  local dead_after, cooldown_s = tonumber(A[1]), tonumber(A[2])
  local out = {}
  local dead = redis.call('ZRANGEBYSCORE', P .. 'servers', '-inf', fmt(NOW - dead_after))
  for _, server in ipairs(dead) do
    if server ~= me then -- never itself: it is running this
      redis.call('ZREM', P .. 'servers', server)
      redis.call('SET', P .. 'dead:' .. server, '1', 'PX', LIVE_MS)
      for _, sid in ipairs(redis.call('SMEMBERS', P .. 'srv:' .. server)) do
        if redis.call('HGET', P .. 's:' .. sid, 'server') == server then
          redis.call('DEL', P .. 's:' .. sid)
          local w = entry(sid)
          if w then
            unqueue(sid, w)
          else
            local m = match_of(sid)
            if m then
              end_match(m, cooldown_s)
              out[#out + 1] = {sid, m[2], m[3], m[4], m[5], m[6]}
            end
          end
        end
      end
      redis.call('DEL', P .. 'srv:' .. server, P .. 'sk:' .. server)
    end
  end
  return out

elseif op == 'sync' then
  -- dead_after, restore (0/1), then per session: sid, ip, match id or "",
  -- and the match as "caller|callee|mode|common" or "" (used to restore).
  -- Re-registers each session here and answers what Redis holds for it.
  local dead_after, restore = tonumber(A[1]), A[2] == '1'
  local out = {}
  for i = 3, #A, 4 do
    local sid, ip, id, fields = A[i], A[i + 1], A[i + 2], A[i + 3]
    local key = P .. 's:' .. sid
    local holder = redis.call('HGET', key, 'server')
    if holder and holder ~= me and server_alive(holder, dead_after) then
      out[#out + 1] = {'elsewhere'}
    else
      redis.call('HSET', key, 'server', me, 'client', ip)
      live(key)
      redis.call('SADD', P .. 'srv:' .. me, sid)
      live(P .. 'srv:' .. me)
      local m = match_of(sid)
      if not m and restore and id ~= '' and not entry(sid) then
        local caller, callee, mode, common = string.match(fields, '^(.-)|(.-)|(.-)|(.*)$')
        store_match(sid, id, caller, callee, mode, common)
        m = match_of(sid)
      end
      if m then
        live(P .. 'm:' .. sid)
        out[#out + 1] = m
      else
        local w = entry(sid)
        if w then
          live(P .. 'w:' .. sid)
          for _, name in ipairs(queues_of(w)) do live(qkey(w.mode, name)) end
          out[#out + 1] = {'wait', w.ticket, w.widen_after}
        else
          out[#out + 1] = {'idle'}
        end
      end
    end
  end
  if #out > 0 then live(P .. 'waiting') end
  return out
end

return redis.error_reply('unknown operation ' .. tostring(op))
