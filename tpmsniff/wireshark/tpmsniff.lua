-- tpmsniff.lua: Wireshark post-dissector for captures written by tpmsniff.
--
-- tpmsniff annotates every frame of its pcapng with a comment (docs/pcapng.md), e.g.
--   conn 4 cmd Create loc=0 h=0x80000000 s=[0x02000000:cont|decrypt (hmac bound(...) ...)]
--       param=TPM2B_SENSITIVE_CREATE(30B):WEAK(AES-128-CFB, ..., proof=hmac) recovered=0000...
-- This script turns that comment into filterable fields:
--   tpmsniff.conn, tpmsniff.dir, tpmsniff.command   where the frame belongs
--   tpmsniff.verdict    ENCRYPTED | WEAK | PLAINTEXT | UNKNOWN | n/a (first parameter)
--   tpmsniff.param      the first parameter's type, tpmsniff.strength why it is (not) derivable
--   tpmsniff.session    handle of each session in the authorization area (PW = 0x40000009)
--   tpmsniff.session.attrs / tpmsniff.session.facts   its attributes and StartAuthSession facts
--   tpmsniff.proof      WEAK: hmac (the session HMAC verified the derived key) | none
--   tpmsniff.recovered  WEAK: the plaintext tpmsniff decrypted (first 64 bytes)
--   tpmsniff.finding    what an observer of the bus learns from this frame
-- Install: copy into the "Personal Lua Plugins" folder (`tshark -G folders`), or run
-- `tshark -X lua_script:tpmsniff.lua ...`. Works with Wireshark 4.0 and later (Lua 5.1-5.4).

local p = Proto("tpmsniff", "tpmsniff annotation")

local f = {
  conn = ProtoField.uint32("tpmsniff.conn", "Connection"),
  dir = ProtoField.string("tpmsniff.dir", "Direction"),
  command = ProtoField.string("tpmsniff.command", "Command"),
  verdict = ProtoField.string("tpmsniff.verdict", "Verdict"),
  param = ProtoField.string("tpmsniff.param", "First parameter"),
  strength = ProtoField.string("tpmsniff.strength", "Strength"),
  session = ProtoField.uint32("tpmsniff.session", "Session", base.HEX),
  attrs = ProtoField.string("tpmsniff.session.attrs", "Session attributes"),
  facts = ProtoField.string("tpmsniff.session.facts", "Session facts"),
  proof = ProtoField.string("tpmsniff.proof", "Proof"),
  recovered = ProtoField.bytes("tpmsniff.recovered", "Recovered plaintext"),
  finding = ProtoField.string("tpmsniff.finding", "Finding"),
  what = ProtoField.string("tpmsniff.what", "What it does"),
}
p.fields = { f.conn, f.dir, f.command, f.verdict, f.param, f.strength, f.session, f.attrs,
  f.facts, f.proof, f.recovered, f.finding, f.what }

local comment_field = Field.new("frame.comment")
local TPM_RS_PW = 0x40000009

-- one authorization-area entry: `0x02000000:cont|decrypt (facts)`, `PW:- authValue(6B) IN CLEAR`
local function add_session(tree, text)
  local who, rest = text:match("^(%S+):(.*)$")
  if who == nil then
    return nil
  end
  local handle = who == "PW" and TPM_RS_PW or tonumber(who:match("^0x(%x+)$") or "", 16)
  local attrs = rest:match("^(%S+)") or ""
  local st = handle and tree:add(f.session, handle) or tree:add(f.attrs, attrs)
  if handle then
    if who == "PW" then
      st:append_text(" (password session)")
    end
    st:add(f.attrs, attrs)
  end
  local facts = rest:match("^%S+ (%b())")
  if facts then
    st:add(f.facts, facts:sub(2, -2))
  end
  if rest:find(" IN CLEAR", 1, true) then
    return "authValue in clear"
  end
  return nil
end

local function annotate(tree, comment)
  local conn, rest = comment:match("^conn (%d+) (.*)$")
  if conn == nil then
    return
  end
  -- the semantic line follows the first " | "; parse only the annotation before it
  local cut = rest:find(" | ", 1, true)
  local what = cut and rest:sub(cut + 3) or nil
  local head = cut and rest:sub(1, cut - 1) or rest
  local t = tree:add(p, "tpmsniff: conn " .. conn)
  t:add(f.conn, tonumber(conn))
  local kind, dir, name = head:match("^(ctrl) (%a+) (%S+)")
  if kind == nil then
    dir, name = head:match("^(%a+) (%S+)")
  end
  if dir == "cmd" or dir == "rsp" then
    t:add(f.dir, dir)
    t:add(f.command, name)
  else
    t:add(f.dir, (head:match("^(%S+)")))  -- open, close, ...
  end
  local findings = {}
  local sessions = head:match(" s=(%b[])")
  if sessions then
    local list = sessions:sub(2, -2) .. "; "
    for one in list:gmatch("(.-); ") do
      local finding = add_session(t, one)
      if finding then
        findings[#findings + 1] = finding
      end
    end
  end
  local ptype, verdict, paren = head:match(" param=([%w_]+)%(?%d*B?%)?:([%a/]+)(%b())")
  if ptype == nil then
    ptype, verdict = head:match(" param=([%w_]+)%(?%d*B?%)?:([%a/]+)")
  end
  if verdict then
    t:add(f.param, ptype)
    t:add(f.verdict, verdict)
  elseif head:find(" param=n/a", 1, true) then
    t:add(f.verdict, "n/a")
  end
  if paren then
    local strength = paren:sub(2, -2)
    t:add(f.strength, strength)
    local proof = strength:match("proof=(%a+)")
    if proof then
      t:add(f.proof, proof)
    end
  end
  local recovered = head:match(" recovered=(%x+)")
  if recovered then
    -- a data source of its own: the GUI shows the plaintext in the bytes pane
    local plain = ByteArray.new(recovered):tvb("tpmsniff recovered")
    t:add(f.recovered, plain())
  end
  if verdict == "PLAINTEXT" then
    findings[#findings + 1] = ptype .. " in clear"
  elseif verdict == "WEAK" then
    findings[#findings + 1] = ptype .. " derivable" .. (recovered and ", recovered" or "")
  elseif verdict == "UNKNOWN" then
    findings[#findings + 1] = ptype .. " encrypted by a session whose start was not seen"
  end
  local err = head:match(" %[(decode failed[^%]]*)%]") or head:match(" %[(unframed[^%]]*)%]")
  if err then
    findings[#findings + 1] = err
  end
  for _, finding in ipairs(findings) do
    t:add(f.finding, finding)
  end
  if what then
    t:add(f.what, what)
  end
end

function p.dissector(_, _, tree)
  for _, fi in ipairs({ comment_field() }) do
    annotate(tree, tostring(fi.value))
  end
end

register_postdissector(p)
