-- Omiro's shared state in Redis. Every operation that must be atomic is one
-- call of this script (EVALSHA), so no other client runs in between.
--
-- ARGV[1] operation, ARGV[2] key prefix, ARGV[3] clock offset in seconds
-- (0 outside tests), ARGV[4] this server's id, ARGV[5] life of live records
-- in seconds, ARGV[6] the incarnation of Redis the caller knows ("boot"),
-- ARGV[7] the caller's deadline in Redis time ("" for none), ARGV[8] how many
-- of its own heartbeats a server waits before taking a silent one for dead.
-- The operation's own arguments follow from ARGV[9].
--
-- Nothing here trusts a server's clock, nor that a command arrives in time:
--
-- * A call that arrives after its deadline does nothing (error LATE): its
--   sender has given up on it (a Redis that was frozen, a slow network).
-- * A call from a server that knows another incarnation of Redis does
--   nothing (error REBOOT): Redis lost its data (restarted empty, or a new
--   Redis behind the same address), and that server must put back what it
--   holds (``sync`` with restore) before anything may act on the rest.
-- * Liveness is counted in heartbeats, not seconds: each heartbeat takes a
--   number from one counter (P.."beat"); a server is dead for another once
--   that other has beaten DEAD_BEATS times since the first one's last beat.
--   A frozen Redis freezes every count alike, so nobody dies of it.
-- * Every session a server claims carries a claim token; ending, leaving or
--   releasing it is refused unless the caller holds the current claim.
--
-- Time is Redis's TIME, never a server's clock. Durations that decide a
-- rule (cooldowns, blocks, windows) are stored as their end time and
-- compared with TIME; every key also has a TTL a little longer than what it
-- describes, so nothing outlives its use. The exceptions: a permanent ban
-- (P.."ban:"..target without an end), the indexes that list it (P.."bans",
-- P.."bk:"..key, P.."netbans") are kept until an operator lifts it.
--
-- Keys (P = prefix):
--   P.."s:"..sid       hash   a live socket: server, client, claim (token), account (the
--                             token's account key, when it has one: reports name it)
--   P.."srv:"..server  set    the sessions a server holds
--   P.."sk:"..server   hash   client -> open sockets this server reserved for it (sockets_per_ip)
--   P.."servers"       zset   server -> the beat number of its last heartbeat (-1: stopped)
--   P.."hb:"..server   list   the beat numbers of its last heartbeats, newest first
--   P.."beat"          string the heartbeat counter
--   P.."boot"          string this Redis's incarnation (gone after an empty restart, or
--                             when no server has beaten for the life of live records)
--   P.."w:"..sid       hash   a waiting entry: mode, ints (its queue names: interests, and
--                             languages as " "..code), since, ticket, widened, req.
--                             "mode" here and below is the session's pool: its mode, and
--                             "@"..band when the gate verified an age band (matchmaking.py
--                             pool_of); sessions meet only within one pool
--   P.."q:"..mode..":"..interest  zset  sid -> entry order ("" interest: the general queue;
--                             " "..code: a language's)
--   P.."waiting"       set    waiting sessions (for stats)
--   P.."m:"..sid       hash   the match a session is in: id, caller, callee, mode, common,
--                             cs, es (the servers holding caller and callee), and
--                             pending (set when only this side was put back yet)
--   P.."me:"..id       string a match that ended (a tombstone, for TOMB_MS)
--   P.."le:"..sid      hash   the last match a leave ended (answers a retried leave)
--   P.."cd:"..pair     string rematch cooldown end
--   P.."bl:"..pair     string block end (a pair of sessions)
--   P.."blc:"..pair    string block end (a pair of clients)
--   P.."rl:"..key      hash   rate-limit window: start, count
--   P.."rep:"..ip      zset   reporter ip -> when, for autobans
--   P.."seq"           string counter for tickets and queue order
--   P.."bans"          zset   banned target -> when; P.."ban:"..target the ban (JSON)
--                             (an account's ban: target "account:"..key, found by GET)
--   P.."bk:"..key      set    the bans covering one client whole (exact lookup)
--   P.."netbans"       set    the bans of wider networks (checked one by one)
--   P.."banidx"        string which index the bans have (the IPv6 group size)
--   P.."bh:"..key      list   the bans set on one client (or network), newest first: its
--                             history for the moderators (records.lua reads it)
--   P.."rs:"..id       hash   the seats of match id being taken back with tickets: c / e
--                             (the session holding the caller's / callee's seat back),
--                             until (a held seat's grace end), keep (the partner that kept
--                             the match for the other seat) and keep_until, paired, over;
--                             kept for a ticket's life (at most 9 short fields)
-- Reports, accounts and the audit log are records.lua's.

local op, P, offset, me = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local LIVE_MS = math.floor(tonumber(ARGV[5]) * 1000)
local BOOT, DEADLINE, DEAD_BEATS = ARGV[6], ARGV[7], tonumber(ARGV[8])
local SCAN_LIMIT = 256
local GRACE_MS = 1000
local TOMB_MS = 60000

local t = redis.call('TIME')
local NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000 + offset

local function fmt(x)
  return string.format('%.6f', x)
end

if DEADLINE ~= '' and NOW > tonumber(DEADLINE) then
  return redis.error_reply('LATE ' .. fmt(NOW))
end

-- Operations a server runs before it knows (or after it lost) the incarnation.
local BOOTLESS = {register = true, adopt = true}
if not BOOTLESS[op] then
  local current = redis.call('GET', P .. 'boot')
  if current ~= BOOT then
    return redis.error_reply('REBOOT ' .. (current or ''))
  end
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

local function as_reply(m)
  return {'match', m.id, m.caller, m.callee, m.mode, m.common, m.cs or '', m.es or ''}
end

local function match_of(sid)
  local m = hash(P .. 'm:' .. sid)
  if not m then return nil end
  return as_reply(m)
end

-- My k-th most recent heartbeat's number (1: the latest), or nil.
local function my_beat(k)
  local v = redis.call('LINDEX', P .. 'hb:' .. me, k - 1)
  return v and tonumber(v)
end

-- Registered, and not yet silent for DEAD_BEATS of my heartbeats.
local function not_dead(server)
  if server == me then return true end
  local beat = redis.call('ZSCORE', P .. 'servers', server)
  if not beat or tonumber(beat) < 0 then return false end
  local line = my_beat(DEAD_BEATS)
  return not line or tonumber(beat) >= line
end

-- A server whose users may be matched now: alive as far as the heartbeats
-- tell, and listening on its channel (a killed server's subscription ends
-- with its process, long before it misses enough heartbeats).
local listening = {}
local function reachable(server)
  if server == me then return true end
  local known = listening[server]
  if known == nil then
    known = not_dead(server)
      and redis.call('PUBSUB', 'NUMSUB', P .. 'bus:' .. server)[2] > 0
    listening[server] = known
  end
  return known
end

local function holder_of(sid)
  return redis.call('HGET', P .. 's:' .. sid, 'server')
end

-- Whether the caller may act for sid: nobody holds it, or the caller holds
-- the current claim.
local function ours(sid, token)
  local claim = redis.call('HGET', P .. 's:' .. sid, 'claim')
  return not claim or claim == token
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
-- A session whose server is not reachable is passed over (it stays queued
-- until its server listens again, or is swept).
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
          local holder = holder_of(other)
          if (not holder or reachable(holder)) and not blocked(sid, client, other) then
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

local function store_match(sid, m, pending)
  local key = P .. 'm:' .. sid
  redis.call('DEL', key)
  redis.call('HSET', key, 'id', m[2], 'caller', m[3], 'callee', m[4], 'mode', m[5],
    'common', m[6], 'cs', m[7], 'es', m[8])
  if pending then redis.call('HSET', key, 'pending', pending) end
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
  -- The two clients come along in the reply (not stored): the server that
  -- formed the match tags the pair (match_found's "pair") without asking again.
  local m = {'match', id, caller, callee, w.mode, encoded, holder_of(caller) or '',
    holder_of(callee) or '', client_of(caller) or '', client_of(callee) or ''}
  store_match(caller, m)
  store_match(callee, m)
  return m
end

local function end_match(m, cooldown_s)
  local id = m[2]
  for _, sid in ipairs({m[3], m[4]}) do
    if redis.call('HGET', P .. 'm:' .. sid, 'id') == id then redis.call('DEL', P .. 'm:' .. sid) end
  end
  redis.call('SET', P .. 'me:' .. id, '1', 'PX', TOMB_MS)
  if cooldown_s > 0 then
    redis.call('SET', P .. 'cd:' .. pair(m[3], m[4]), fmt(NOW + cooldown_s), 'PX', ms(cooldown_s))
  end
end

-- Become idle; return the ended match, if any. A retried leave (same req)
-- answers what the first one did.
local function leave(sid, cooldown_s, req)
  local lekey = P .. 'le:' .. sid
  local last = hash(lekey)
  if last and last.req == req then return as_reply(last) end
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
    'common', m[6], 'cs', m[7], 'es', m[8])
  redis.call('PEXPIRE', lekey, 60000)
  return m
end

local function forget_session(sid, server)
  redis.call('DEL', P .. 's:' .. sid)
  redis.call('SREM', P .. 'srv:' .. server, sid)
end

local function hold(sid, client, token)
  local key = P .. 's:' .. sid
  redis.call('HSET', key, 'server', me, 'client', client, 'claim', token)
  live(key)
  redis.call('SADD', P .. 'srv:' .. me, sid)
  live(P .. 'srv:' .. me)
end

local function beat_now()
  return tonumber(redis.call('GET', P .. 'beat') or '0')
end

-- fresh: this server could not beat for a while (Redis was away from it):
-- its beats from before do not count, or a server that happened to beat a
-- little later after the outage would look dead to it.
local function heartbeat(fresh)
  local n = redis.call('INCR', P .. 'beat')
  live(P .. 'beat')
  local added = redis.call('ZADD', P .. 'servers', n, me)
  live(P .. 'servers')
  local hb = P .. 'hb:' .. me
  if fresh then redis.call('DEL', hb) end
  redis.call('LPUSH', hb, n)
  redis.call('LTRIM', hb, 0, DEAD_BEATS)
  live(hb)
  return added
end

local function elsewhere()
  return redis.error_reply('ELSEWHERE the session is held by another socket')
end

-- The index key under which a ban is found, for the exact lookup; "" for a
-- wider network (computed by the caller: it knows the IPv6 group size).
local function unindex(target, key)
  if key ~= '' then redis.call('SREM', P .. 'bk:' .. key, target) end
  redis.call('SREM', P .. 'netbans', target)
end

-- Make an index key live at least until unix ms ``upto`` ("" for ever).
local function keep_until(key, upto)
  if upto == '' then
    redis.call('PERSIST', key)
    return
  end
  local at = redis.call('PEXPIRETIME', key)
  if at == -2 then return end
  if at == -1 and redis.call('SCARD', key) > 1 then return end -- holds a permanent one
  local wanted = tonumber(upto) + GRACE_MS
  if at == -1 or at < wanted then redis.call('PEXPIREAT', key, wanted) end
end

local A = {}
for i = 9, #ARGV do A[#A + 1] = ARGV[i] end

if op == 'join' then
  -- sid, mode, interests (JSON list), interest timeout, match id, claim token
  local sid, mode, ints_json, timeout, id = A[1], A[2], A[3], tonumber(A[4]), A[5]
  if not ours(sid, A[6]) then return elsewhere() end
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
  -- sid, ticket, match id, claim token
  local sid, ticket, id = A[1], A[2], A[3]
  if not ours(sid, A[4]) then return elsewhere() end
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
  -- sid, cooldown, request id, claim token
  if not ours(A[1], A[4]) then return elsewhere() end
  return leave(A[1], tonumber(A[2]), A[3])

elseif op == 'release' then
  -- sid, cooldown, request id, claim token: a socket that held sid is gone.
  -- Only the current claim's holder ends what sid is doing: a socket the
  -- session has since opened elsewhere keeps its queue entry and match.
  local sid, token = A[1], A[4]
  local key = P .. 's:' .. sid
  local claim = redis.call('HGET', key, 'claim')
  if claim and claim ~= token then return false end
  local ended = leave(sid, tonumber(A[2]), A[3])
  if claim then forget_session(sid, redis.call('HGET', key, 'server')) end
  return ended

elseif op == 'claim' then
  -- sid, client, claim token, account key or ""
  local sid, client, token = A[1], A[2], A[3]
  local claim = redis.call('HGET', P .. 's:' .. sid, 'claim')
  if claim then
    -- A retry of this very claim; else held (here, by a live server, or by a
    -- dead one the sweep has not freed yet: the sweep also tells its partner).
    if claim == token then return 1 end
    return 0
  end
  hold(sid, client, token)
  if A[4] and A[4] ~= '' then redis.call('HSET', P .. 's:' .. sid, 'account', A[4]) end
  return 1

elseif op == 'reserve' then
  -- client, limit: one of the client's open sockets, counted over every
  -- server that may still hold sockets (a killed one's stop counting once
  -- its subscription is gone; the sweep frees them)
  local client, limit = A[1], tonumber(A[2])
  local taken = 0
  for _, server in ipairs(redis.call('ZRANGE', P .. 'servers', 0, -1)) do
    if reachable(server) then
      taken = taken + (tonumber(redis.call('HGET', P .. 'sk:' .. server, client)) or 0)
    end
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

elseif op == 'deliver' then
  -- sid, message, sender, match id: deliver to whoever holds sid, if the
  -- sender's match (when named) is still on. Answers {'sent', receivers}
  -- ('sent', 0: held, but its server is not listening right now) or {'gone'}
  -- (no such match any more, or nobody holds sid).
  local sid, message, sender, id = A[1], A[2], A[3], A[4]
  if id ~= '' then
    local current = redis.call('HGET', P .. 'm:' .. sender, 'id')
    if current ~= id then
      if current or redis.call('EXISTS', P .. 'me:' .. id) == 1 then return {'gone'} end
      -- No record either way: lost (a resync puts it back). Not an end.
    end
  end
  local holder = holder_of(sid)
  if not holder then
    if id ~= '' then return {'sent', 0} end
    return {'gone'}
  end
  return {'sent', redis.call('PUBLISH', P .. 'bus:' .. holder, message)}

elseif op == 'seat' then
  -- match id, seat ("c" or "e"), claimant sid, grace, keep (a ticket's life),
  -- the old caller, the old callee, mode, the new match's id. A client takes
  -- back its seat in match id with its ticket (seats.py has the rules):
  -- {'hold'}, {'used'}, {'going'} (the match goes on: a third person),
  -- {'over'}, or the match re-formed with the partner holding (or keeping)
  -- the other seat: both sessions are put in it here.
  local id, seat, sid, grace_s, keep_s = A[1], A[2], A[3], tonumber(A[4]), tonumber(A[5])
  local old_c, old_e, mode, new_id = A[6], A[7], A[8], A[9]
  local key = P .. 'rs:' .. id
  local r = hash(key) or {}
  local function over()
    redis.call('DEL', key)
    redis.call('HSET', key, 'over', '1')
    redis.call('PEXPIRE', key, ms(keep_s))
    return {'over'}
  end
  if r[seat] == sid then -- this session's own claim again (its answer was lost)
    if r.paired then return match_of(sid) or {'over'} end
    return {'hold'}
  end
  if r.over then return {'over'} end
  if r.paired or r[seat] then return {'used'} end
  for _, old in ipairs({old_c, old_e}) do
    if redis.call('HGET', P .. 'm:' .. old, 'id') == id then return {'going'} end
  end
  local other = seat == 'c' and 'e' or 'c'
  local partner, kept = r[other], false
  if partner then
    if tonumber(r['until']) <= NOW then return over() end
  elseif r.keep and r.keep == (seat == 'c' and old_e or old_c) then
    if tonumber(r.keep_until) <= NOW then return over() end
    partner, kept = r.keep, true
  elseif redis.call('EXISTS', P .. 'me:' .. id) == 1 then
    return over() -- it ended, and nobody kept it
  end
  if partner then
    local server = holder_of(partner)
    if server and not_dead(server) then
      if redis.call('EXISTS', P .. 'm:' .. partner) == 1 or entry(partner) then
        return over() -- the partner moved on
      end
      local caller, callee = sid, partner
      if seat == 'e' then caller, callee = partner, sid end
      local m = {'match', new_id, caller, callee, mode, '[]', holder_of(caller) or me,
        holder_of(callee) or me}
      store_match(caller, m)
      store_match(callee, m)
      redis.call('HSET', key, 'paired', '1', seat, sid)
      redis.call('PEXPIRE', key, ms(keep_s))
      return m
    end
    -- The partner's socket is gone (its server died or restarted): it may
    -- come back with its own ticket, so this seat is held like a first one.
    redis.call('HDEL', key, other, 'until', 'keep', 'keep_until')
  end
  redis.call('HSET', key, seat, sid, 'until', fmt(NOW + grace_s))
  redis.call('PEXPIRE', key, ms(keep_s))
  return {'hold'}

elseif op == 'keep_seat' then
  -- match id, keeper sid, grace, keep: the keeper's partner in match id lost
  -- its socket; the keeper keeps the match for it for the grace.
  local key = P .. 'rs:' .. A[1]
  if redis.call('HEXISTS', key, 'over') == 1 or redis.call('HEXISTS', key, 'paired') == 1 then
    return 0
  end
  redis.call('HSET', key, 'keep', A[2], 'keep_until', fmt(NOW + tonumber(A[3])))
  redis.call('PEXPIRE', key, ms(tonumber(A[4])))
  return 1

elseif op == 'drop_seat' then
  -- match id, sid, keep: sid no longer holds its seat (nor keeps the match)
  -- back: the match is over for its tickets (unless it was paired again).
  local key = P .. 'rs:' .. A[1]
  local r = hash(key)
  if r and (r.paired or r.over) then return 0 end
  if r and r.c ~= A[2] and r.e ~= A[2] and r.keep ~= A[2] then return 0 end
  redis.call('DEL', key)
  redis.call('HSET', key, 'over', '1')
  redis.call('PEXPIRE', key, ms(tonumber(A[3])))
  return 1

elseif op == 'ping' then
  return fmt(NOW)

elseif op == 'stats' then
  local online = 0
  for _, server in ipairs(redis.call('ZRANGE', P .. 'servers', 0, -1)) do
    if not_dead(server) then online = online + redis.call('SCARD', P .. 'srv:' .. server) end
  end
  return {online, redis.call('SCARD', P .. 'waiting')}

elseif op == 'heartbeat' then
  -- fresh (0/1): the last heartbeat failed
  local added = heartbeat(A[1] == '1')
  for _, own in ipairs({P .. 'srv:' .. me, P .. 'sk:' .. me}) do
    if redis.call('EXISTS', own) == 1 then live(own) end
  end
  live(P .. 'boot')
  if redis.call('EXISTS', P .. 'seq') == 1 then live(P .. 'seq') end
  return {added, fmt(NOW)}

elseif op == 'register' then
  -- a fresh incarnation id (used if this Redis has none): registered only
  -- if no server has this one's id
  if redis.call('ZSCORE', P .. 'servers', me) then return {0, '', fmt(NOW)} end
  redis.call('SET', P .. 'boot', A[1], 'NX')
  live(P .. 'boot')
  heartbeat(true)
  return {1, redis.call('GET', P .. 'boot'), fmt(NOW)}

elseif op == 'adopt' then
  -- a fresh incarnation id: this Redis's incarnation, made now if it has none
  redis.call('SET', P .. 'boot', A[1], 'NX')
  live(P .. 'boot')
  return {redis.call('GET', P .. 'boot'), fmt(NOW)}

elseif op == 'unregister' then
  -- a clean stop: look dead at once, so the next sweep frees what is left
  if redis.call('ZSCORE', P .. 'servers', me) then
    redis.call('ZADD', P .. 'servers', -1, me)
  end
  return 1

elseif op == 'retire' then
  -- server: one known to be dead (a worker this one replaces): as if it had
  -- stopped cleanly, so the next sweep frees what it held at once
  if A[1] ~= me and redis.call('ZSCORE', P .. 'servers', A[1]) then
    redis.call('ZADD', P .. 'servers', -1, A[1])
  end
  return 1

elseif op == 'add_ban' then
  -- target, ban (JSON), until (unix ms) or "", index key or "" (a network),
  -- how long the history of bans is kept (s), how many of one client's
  local target, upto, key = A[1], A[3], A[4]
  local history = P .. 'bh:' .. (key ~= '' and key or target)
  redis.call('LPUSH', history, A[2])
  redis.call('LTRIM', history, 0, tonumber(A[6]) - 1)
  redis.call('PEXPIRE', history, ms(tonumber(A[5])))
  local ban = P .. 'ban:' .. target
  redis.call('SET', ban, A[2])
  if upto ~= '' then redis.call('PEXPIREAT', ban, tonumber(upto) + GRACE_MS) end
  redis.call('ZADD', P .. 'bans', fmt(NOW), target)
  local index = key ~= '' and P .. 'bk:' .. key or P .. 'netbans'
  redis.call('SADD', index, target)
  keep_until(index, upto)
  return 1

elseif op == 'remove_ban' then
  -- target, index key or ""
  redis.call('ZREM', P .. 'bans', A[1])
  unindex(A[1], A[2])
  return redis.call('DEL', P .. 'ban:' .. A[1])

elseif op == 'ban_for' then
  -- index key or "": the bans covering that client whole, then every
  -- network ban (the caller checks which of those cover it)
  local out = {}
  local indexes = {P .. 'netbans'}
  if A[1] ~= '' then table.insert(indexes, 1, P .. 'bk:' .. A[1]) end
  for _, index in ipairs(indexes) do
    for _, target in ipairs(redis.call('SMEMBERS', index)) do
      local ban = redis.call('GET', P .. 'ban:' .. target)
      if ban then out[#out + 1] = ban else redis.call('SREM', index, target) end
    end
  end
  return out

elseif op == 'index_bans' then
  -- index version, then target, key, ...: (re)build the lookup index of
  -- every ban kept (after an upgrade, or a change of the IPv6 group size)
  if redis.call('GET', P .. 'banidx') == A[1] then return 0 end
  for i = 2, #A, 2 do
    local target, key = A[i], A[i + 1]
    local ttl = redis.call('PEXPIRETIME', P .. 'ban:' .. target)
    if ttl ~= -2 then
      local index = key ~= '' and P .. 'bk:' .. key or P .. 'netbans'
      redis.call('SADD', index, target)
      keep_until(index, ttl == -1 and '' or tostring(ttl - GRACE_MS))
    end
  end
  redis.call('SET', P .. 'banidx', A[1])
  return 1

elseif op == 'bans' then
  -- every ban kept, newest first (expired ones are dropped from the index)
  local out = {}
  for _, target in ipairs(redis.call('ZREVRANGE', P .. 'bans', 0, -1)) do
    local ban = redis.call('GET', P .. 'ban:' .. target)
    if ban then out[#out + 1] = ban else redis.call('ZREM', P .. 'bans', target) end
  end
  return out

elseif op == 'sweep' then
  -- cooldown: forget the servers that stopped, or that stayed silent while
  -- this one beat DEAD_BEATS times; return {sid, match...} for each of their
  -- sessions whose match this ended
  local cooldown_s = tonumber(A[1])
  local out = {}
  local dead = redis.call('ZRANGEBYSCORE', P .. 'servers', '-inf', '(0')
  local line = my_beat(DEAD_BEATS)
  if line then
    for _, server in ipairs(redis.call('ZRANGEBYSCORE', P .. 'servers', '0', '(' .. line)) do
      dead[#dead + 1] = server
    end
  end
  for _, server in ipairs(dead) do
    if server ~= me then -- never itself: it is running this
      redis.call('ZREM', P .. 'servers', server)
      redis.call('DEL', P .. 'hb:' .. server)
      for _, sid in ipairs(redis.call('SMEMBERS', P .. 'srv:' .. server)) do
        if holder_of(sid) == server then
          redis.call('DEL', P .. 's:' .. sid)
          local w = entry(sid)
          if w then
            unqueue(sid, w)
          else
            local m = match_of(sid)
            if m then
              end_match(m, cooldown_s)
              out[#out + 1] = {sid, m[2], m[3], m[4], m[5], m[6], m[7], m[8]}
            end
          end
        end
      end
      redis.call('DEL', P .. 'srv:' .. server, P .. 'sk:' .. server)
    end
  end
  return out

elseif op == 'sync' then
  -- restore (0/1), rematch (0/1), cooldown, then per session: sid, client,
  -- claim token, match id or "", the match as
  -- "caller|callee|mode|cs|es|common" or "", and its wait as
  -- "mode|ticket|interests" or "" (ticket -1: widened).
  --
  -- Re-registers each session here (unless another socket holds it on a
  -- live server) and answers what Redis holds for it. A match this server
  -- knows but Redis has no record of is put back, unless it ended (its
  -- tombstone, or the partner is in another match): first this side alone
  -- ("pending"), confirmed when the partner's server puts its side back; a
  -- side left pending for DEAD_BEATS heartbeats ends. With restore (Redis
  -- lost everything), a wait is put back too; with rematch, a waiting
  -- session looks for a partner again (one passed over while its server
  -- was not listening).
  local restore, rematch, cooldown_s = A[1] == '1', A[2] == '1', tonumber(A[3])
  local out = {}
  local waited = false
  for i = 4, #A, 6 do
    local sid, client, token, id, fields, wait = A[i], A[i + 1], A[i + 2], A[i + 3], A[i + 4],
      A[i + 5]
    local key = P .. 's:' .. sid
    local holder, claim = unpack(redis.call('HMGET', key, 'server', 'claim'))
    if claim and claim ~= token and holder ~= me and not_dead(holder) then
      out[#out + 1] = {'elsewhere'}
    else
      hold(sid, client, token)
      local reply
      local m = hash(P .. 'm:' .. sid)
      local w = entry(sid)
      if id ~= '' and m and m.id == id then
        local partner = m.caller == sid and m.callee or m.caller
        if m.pending then
          if redis.call('HGET', P .. 'm:' .. partner, 'id') == id then
            redis.call('HDEL', P .. 'm:' .. sid, 'pending')
            redis.call('HDEL', P .. 'm:' .. partner, 'pending')
          else
            local line = my_beat(DEAD_BEATS)
            if line and line > tonumber(m.pending) then -- the partner never came back
              end_match(as_reply(m), cooldown_s)
              reply = {'ended'}
            end
          end
        end
        if not reply then
          live(P .. 'm:' .. sid)
          reply = as_reply(m)
        end
      elseif id ~= '' and not m and not w then
        local caller, callee, mode, cs, es, common =
          string.match(fields, '^(.-)|(.-)|(.-)|(.-)|(.-)|(.*)$')
        local partner = caller == sid and callee or caller
        local theirs = redis.call('HGET', P .. 'm:' .. partner, 'id')
        if redis.call('EXISTS', P .. 'me:' .. id) == 1 or (theirs and theirs ~= id) then
          reply = {'ended'}
        else
          local put = {'match', id, caller, callee, mode, common, cs, es}
          if theirs == id then
            store_match(sid, put)
            redis.call('HDEL', P .. 'm:' .. partner, 'pending')
          else
            store_match(sid, put, tostring(beat_now()))
          end
          reply = put
        end
      elseif m then
        live(P .. 'm:' .. sid)
        reply = as_reply(m)
      end
      if not reply and restore and wait ~= '' and not w then
        local mode, ticket, ints = string.match(wait, '^(.-)|(.-)|(.*)$')
        local widened = ticket == '-1'
        if widened then ticket = tostring(seq()) end
        redis.call('HSET', P .. 'w:' .. sid, 'mode', mode, 'ints', ints, 'since', fmt(NOW),
          'ticket', ticket, 'widened', widened and '1' or '0', 'req', '', 'widen_after', '-1')
        w = entry(sid)
        for _, name in ipairs(queues_of(w)) do enqueue(sid, mode, name) end
        redis.call('SADD', P .. 'waiting', sid)
      end
      if not reply and w then
        waited = true
        live(P .. 'w:' .. sid)
        for _, name in ipairs(queues_of(w)) do live(qkey(w.mode, name)) end
        local partner = rematch and wait ~= '' and find(sid, w.mode, queues_of(w))
        if partner then
          unqueue(sid, w)
          local formed = form(partner, sid, cjson.decode(w.ints), tonumber(w.since),
            string.sub(redis.sha1hex(sid .. '|' .. partner .. '|' .. fmt(NOW)), 1, 32))
          formed[1] = 'formed'
          reply = formed
        else
          reply = {'wait', w.ticket, w.widen_after}
        end
      end
      out[#out + 1] = reply or {'idle'}
    end
  end
  if waited then live(P .. 'waiting') end
  return out
end

return redis.error_reply('unknown operation ' .. tostring(op))
