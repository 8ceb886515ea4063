// The one user-assigned managed identity the bridge uses for everything: host storage, the
// deployment container, Key Vault references, Application Insights ingestion and Microsoft Graph.
// A user-assigned identity outlives the function app, so a Graph app-role grant survives redeploys.

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region of the identity.')
param location string

@description('Tags applied to the identity.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = {
  name: name
  location: location
  tags: tags
}

output name string = identity.name
output resourceId string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
