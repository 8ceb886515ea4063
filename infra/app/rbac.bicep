// Every Azure role assignment of the deployment, each at the narrowest scope the platform honours.
// Role definitions are built-in and their ids are the same in every tenant.

@description('Name of the storage account.')
param storageAccountName string

@description('Queue the ingest function writes accepted reports to.')
param queueName string

@description('Queue holding reports that could not be delivered.')
param poisonQueueName string

@description('Table holding the run state per (script, device).')
param runStateTableName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Name of the key vault holding the HMAC secrets.')
param keyVaultName string

@description('Principal (object) id of the function app\'s user-assigned managed identity.')
param managedIdentityPrincipalId string

@description('Principal id of the person or pipeline running the deployment (azd sets AZURE_PRINCIPAL_ID); empty grants nothing.')
param operatorPrincipalId string = ''

@description('Kind of principal operatorPrincipalId is.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param operatorPrincipalType string = 'User'

// Role name next to its GUID, so a reviewer can check each grant without a lookup.
var roles = {
  'Storage Blob Data Owner': 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  'Storage Queue Data Contributor': '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  'Storage Table Data Contributor': '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb'
  'Key Vault Secrets User': '4633458b-17de-408a-b874-0445c86b69e6'
  'Key Vault Secrets Officer': 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2025-01-01' existing = {
  name: storageAccountName
}

resource queueServices 'Microsoft.Storage/storageAccounts/queueServices@2025-01-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2025-01-01' existing = {
  parent: queueServices
  name: queueName
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2025-01-01' existing = {
  parent: queueServices
  name: poisonQueueName
}

resource tableServices 'Microsoft.Storage/storageAccounts/tableServices@2025-01-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource runStateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2025-01-01' existing = {
  parent: tableServices
  name: runStateTableName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2025-05-01' existing = {
  name: keyVaultName
}

// Account scope, not a container: the Functions host creates its own containers (leases, host
// keys) at run time next to the deployment-package container, and needs to own blobs in each.
resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, managedIdentityPrincipalId, roles['Storage Blob Data Owner'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Blob Data Owner'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Functions host storage and the Flex Consumption deployment package'
  }
}

// Queue scope: the bridge and its queue trigger touch only the delivery queue and its poison queue.
resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(queue.id, managedIdentityPrincipalId, roles['Storage Queue Data Contributor'])
  scope: queue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Enqueue accepted reports, re-enqueue retries with a delay'
  }
}

resource poisonQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(poisonQueue.id, managedIdentityPrincipalId, roles['Storage Queue Data Contributor'])
  scope: poisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Dead-letter permanent failures with their reason'
  }
}

// Table scope: the run-state table is the only table the bridge uses.
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(runStateTable.id, managedIdentityPrincipalId, roles['Storage Table Data Contributor'])
  scope: runStateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Table Data Contributor'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Latest accepted and delivered state per (script, device)'
  }
}

// Component scope: needed because the component accepts only Entra ID-authenticated telemetry.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, managedIdentityPrincipalId, roles['Monitoring Metrics Publisher'])
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Monitoring Metrics Publisher'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Send telemetry to Application Insights with local auth disabled'
  }
}

// Vault scope rather than the secret: the secret may be created after the deployment (see
// docs/operations.md), and a role on a missing secret cannot be assigned. The vault holds only
// this bridge's secrets, so the reach is the same.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, managedIdentityPrincipalId, roles['Key Vault Secrets User'])
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Key Vault Secrets User'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Resolve the BRIDGE_HMAC_SECRETS Key Vault reference'
  }
}

// The operator sets and rotates the HMAC secrets; nobody else needs to write them.
resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roles['Key Vault Secrets Officer'])
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Key Vault Secrets Officer'])
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'Set and rotate the HMAC secrets'
  }
}

// The operator replays dead letters once their cause is fixed (the replay command, see README).
resource operatorPoisonQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(poisonQueue.id, operatorPrincipalId, roles['Storage Queue Data Contributor'])
  scope: poisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'Read and remove dead letters when replaying them'
  }
}

resource operatorQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(queue.id, operatorPrincipalId, roles['Storage Queue Data Contributor'])
  scope: queue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'Put replayed reports back on the delivery queue'
  }
}
