// Optional (main.bicep's grantGraphPermission): grants the managed identity its Microsoft Graph
// application permissions: DeviceManagementConfiguration.ReadWrite.All for the run-state PATCH,
// and Device.ReadWrite.All for the entra destination's extension-attribute PATCH. Deploying this
// needs Entra rights (AppRoleAssignment.ReadWrite.All and Application.Read.All, or a role such as
// Privileged Role Administrator); deployers without them leave it off and have an administrator
// run infra/scripts/grant-graph-permission.sh instead. On the very first deployment the new
// identity may not have replicated in Entra yet and the grant fails; running the deployment again
// succeeds (docs/operations.md, "Grant the Graph permission").
extension microsoftGraphV1

@description('Principal (object) id of the managed identity receiving the app roles.')
@minLength(36)
@maxLength(36)
param principalId string

@description('Values of the Graph application roles to grant, e.g. DeviceManagementConfiguration.ReadWrite.All.')
@minLength(1)
param appRoleValues array

// Microsoft Graph's application id: the same in every tenant.
var graphAppId = '00000003-0000-0000-c000-000000000000'
// The roles' well-known ids (widely published; see reference/graph-intune.md). Used only if the
// lookup by name below finds nothing, so the grant never silently depends on a copied GUID.
var wellKnownAppRoleIds = {
  'DeviceManagementConfiguration.ReadWrite.All': '9241abd9-d0e6-425a-bd4f-47ba86e767a4'
  'Device.ReadWrite.All': '1138cb37-bd11-4084-a2b7-9f71582aeddb'
}

resource graph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: graphAppId
}

// Graph's application roles by name (value -> id), resolved in the tenant at deployment time.
var graphAppRoleIds = toObject(
  filter(graph.appRoles, role => contains(role.allowedMemberTypes, 'Application')),
  role => role.value,
  role => role.id
)

resource grants 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [
  for value in appRoleValues: {
    appRoleId: contains(graphAppRoleIds, value) ? graphAppRoleIds[value] : wellKnownAppRoleIds[value]
    principalId: principalId
    resourceId: graph.id
  }
]

output appRoleIds array = [for (value, i) in appRoleValues: grants[i].appRoleId]
