// Optional (main.bicep's grantGraphPermission): grants the managed identity Microsoft Graph's
// DeviceManagementConfiguration.ReadWrite.All application permission, which the run-state PATCH
// needs. Deploying this needs Entra rights (AppRoleAssignment.ReadWrite.All and
// Application.Read.All, or a role such as Privileged Role Administrator); deployers without them
// leave it off and have an administrator run infra/scripts/grant-graph-permission.sh instead.
extension microsoftGraphV1

@description('Principal (object) id of the managed identity receiving the app role.')
param principalId string

// Microsoft Graph's application id: the same in every tenant.
var graphAppId = '00000003-0000-0000-c000-000000000000'
var appRoleValue = 'DeviceManagementConfiguration.ReadWrite.All'
// The role's well-known id (widely published; see reference/graph-intune.md). Used only if the
// lookup by name below finds nothing, so the grant never silently depends on a copied GUID.
var wellKnownAppRoleId = '9241abd9-d0e6-425a-bd4f-47ba86e767a4'

resource graph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: graphAppId
}

// Resolve the role id by its name among Graph's application roles.
var matchingRoles = filter(graph.appRoles, role => role.value == appRoleValue)

resource grant 'Microsoft.Graph/appRoleAssignedTo@v1.0' = {
  appRoleId: empty(matchingRoles) ? wellKnownAppRoleId : matchingRoles[0].id
  principalId: principalId
  resourceId: graph.id
}

output appRoleId string = grant.appRoleId
