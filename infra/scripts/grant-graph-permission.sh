#!/usr/bin/env bash
# Grant the bridge's managed identity its Microsoft Graph application permissions:
# DeviceManagementConfiguration.ReadWrite.All (the graph destination's run-state PATCH) and, when the
# entra destination is enabled, Device.ReadWrite.All (its extension-attribute PATCH). The fallback
# for deployers who cannot use main.bicep's grantGraphPermission (it needs Entra rights the
# deployer may not hold).
#
# Run by someone with AppRoleAssignment.ReadWrite.All + Application.Read.All (for example a
# Privileged Role Administrator), signed in with `az login` to the tenant's cloud
# (`az cloud set --name AzureUSGovernment` / `AzureChinaCloud` first for national clouds).
#
# Usage: grant-graph-permission.sh [PRINCIPAL_ID]
#   PRINCIPAL_ID  object id of the managed identity; defaults to $AZURE_MANAGED_IDENTITY_PRINCIPAL_ID
#                 (an output of the deployment: `azd env get-value AZURE_MANAGED_IDENTITY_PRINCIPAL_ID`)
#   BRIDGE_DESTINATIONS  the app setting's value (default graph); `entra` among them adds
#                 Device.ReadWrite.All
# Safe to re-run: an existing assignment is reported and left alone.
set -euo pipefail

principal_id="${1:-${AZURE_MANAGED_IDENTITY_PRINCIPAL_ID:-}}"
destinations="${BRIDGE_DESTINATIONS:-graph}"
graph_app_id="00000003-0000-0000-c000-000000000000" # Microsoft Graph, the same in every tenant

role_values=("DeviceManagementConfiguration.ReadWrite.All")
# The list is split like the app splits it: commas, semicolons or blanks.
if [[ ",${destinations//[;[:space:]]/,}," == *",entra,"* ]]; then
  role_values+=("Device.ReadWrite.All")
fi

if [[ -z "$principal_id" ]]; then
  echo "usage: $0 PRINCIPAL_ID (or set AZURE_MANAGED_IDENTITY_PRINCIPAL_ID)" >&2
  exit 2
fi
if [[ ! "$principal_id" =~ ^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$ ]]; then
  echo "not an object id (GUID): $principal_id" >&2
  exit 2
fi

# The Graph endpoint of the cloud az is signed in to (graph.microsoft.com, graph.microsoft.us, ...).
graph="$(az cloud show --query endpoints.microsoftGraphResourceId --output tsv)"
graph="${graph%/}/v1.0"

graph_sp_id="$(az rest --method get \
  --url "$graph/servicePrincipals(appId='$graph_app_id')" \
  --query id --output tsv)"

grant() {
  local role_value="$1" app_role_id existing
  # Resolve the app role by its name, not a copied GUID.
  app_role_id="$(az rest --method get \
    --url "$graph/servicePrincipals(appId='$graph_app_id')" \
    --query "appRoles[?value=='$role_value' && contains(allowedMemberTypes, 'Application')].id | [0]" \
    --output tsv)"
  if [[ -z "$app_role_id" ]]; then
    echo "Graph has no application role named $role_value in this tenant" >&2
    return 1
  fi

  existing="$(az rest --method get \
    --url "$graph/servicePrincipals/$principal_id/appRoleAssignments" \
    --query "value[?appRoleId=='$app_role_id' && resourceId=='$graph_sp_id'].id | [0]" \
    --output tsv)"
  if [[ -n "$existing" ]]; then
    echo "$role_value is already granted to $principal_id (assignment $existing)"
    return 0
  fi

  az rest --method post \
    --url "$graph/servicePrincipals/$principal_id/appRoleAssignments" \
    --headers "Content-Type=application/json" \
    --body "{\"principalId\":\"$principal_id\",\"resourceId\":\"$graph_sp_id\",\"appRoleId\":\"$app_role_id\"}" \
    --output none
  echo "granted $role_value ($app_role_id) to $principal_id; tokens issued before now lack it until they expire"
}

for role_value in "${role_values[@]}"; do
  grant "$role_value"
done
