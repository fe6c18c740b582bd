-- Argo CD health of an aistack.dev/v1alpha1 AIStack, from the status its operator writes
-- (resource.customizations.health.aistack.dev_AIStack in argocd-cm).
--
--   no status yet, or status of an older generation  -> Progressing
--   phase Pending or Progressing                     -> Progressing
--   phase Ready, Ready=True                          -> Healthy (Suspended: every model scaled to
--                                                      zero by its spec; asleep ones, Idle, serve)
--   phase Degraded                                   -> Degraded
--   phase Blocked (every model denied by license)    -> Degraded
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function explain(c, fallback)
  if c == nil or c.message == nil or c.message == "" then
    return fallback
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.message
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the aistack operator to report the stack's status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  -- Argo CD runs health scripts without Lua's string library: tostring, not string.format.
  hs.message = "Waiting for the aistack operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
local license = condition(status, "LicenseCompliant")
local phase = status.phase

if phase == "Ready" then
  if ready == nil or ready.status ~= "True" then
    hs.status = "Progressing"
    hs.message = explain(ready, "Waiting for the Ready condition")
    return hs
  end
  local models = status.models or {}
  local serving = #models == 0
  for _, m in ipairs(models) do
    -- A model asleep (autoscaled to zero, reason Idle) still serves: a request wakes it.
    if m.replicas == nil or m.replicas > 0 or m.reason == "Idle" then
      serving = true
    end
  end
  if not serving then
    hs.status = "Suspended"
    hs.message = "Every model is scaled to zero"
    return hs
  end
  hs.status = "Healthy"
  hs.message = "Ready"
  if status.modelsReady ~= nil then
    hs.message = "Ready: " .. status.modelsReady .. " models serve"
  end
  if license ~= nil and license.status == "False" then
    -- Warn or DryRun enforcement: deployed, but the policy is not met.
    hs.message = hs.message .. "; license policy not met (not enforced): " .. (license.message or "")
  end
  return hs
end

if phase == "Pending" or phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = explain(ready, phase)
  return hs
end

if phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = explain(ready, "Degraded")
  return hs
end

if phase == "Blocked" then
  -- A LicensePolicy denies every model: nothing will run until the policy or the spec
  -- changes, which needs someone to act, so Degraded rather than Suspended.
  hs.status = "Degraded"
  hs.message = "Blocked: " .. explain(license, explain(ready, "every model is denied by the license policy"))
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
