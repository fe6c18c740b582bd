-- Argo CD health of an aistack.dev/v1alpha1 LicensePolicy, from the Valid condition its
-- operator writes (resource.customizations.health.aistack.dev_LicensePolicy in argocd-cm).
-- Argo CD runs it with only Lua's base, table, package and a safe os library: no string.
--
--   no status yet, or status of an older generation  -> Progressing
--   Valid=True                                       -> Healthy
--   Valid=False, PolicyInvalid (denies every model)  -> Degraded
--   Valid=False, InvalidLicenseIds (entries ignored) -> Degraded
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

local status = obj.status
local valid = nil
if status ~= nil then
  valid = condition(status, "Valid")
end
if valid == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the aistack operator to validate the policy"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the aistack operator to validate generation " .. tostring(generation)
  return hs
end

local message = valid.message or ""
if valid.reason ~= nil and valid.reason ~= "" then
  message = valid.reason .. ": " .. message
end
if valid.status == "True" then
  hs.status = "Healthy"
elseif valid.status == "False" then
  -- PolicyInvalid: the operator denies every model until the policy is fixed.
  -- InvalidLicenseIds: the entries that do not parse allow nothing.
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs
