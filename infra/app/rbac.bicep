// Every Azure role assignment of the deployment, each at the narrowest scope the platform honours.
// Role definitions are built-in and their ids are the same in every tenant; each role's name sits
// next to its GUID below.

@description('Name of the storage account.')
param storageAccountName string

@description('Destination queues of the enabled destinations; each has its <queue>-poison queue.')
param queueNames array

@description('Table holding the run state per (script, device) and destination.')
param runStateTableName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Name of the key vault holding the HMAC secrets.')
param keyVaultName string

@description('Name of the logs destination\'s data collection rule; empty when that destination is off.')
param dataCollectionRuleName string = ''

@description('Whether hmac is among the auth modes: only then does anyone read or write the HMAC secrets.')
param useHmac bool

@description('Principal (object) id of the function app\'s user-assigned managed identity.')
@minLength(36)
@maxLength(36)
param managedIdentityPrincipalId string

@description('Principal id of the operator who runs replay, status and doctor (azd sets AZURE_PRINCIPAL_ID); empty grants nothing.')
@maxLength(36)
param operatorPrincipalId string = ''

@description('Kind of principal operatorPrincipalId is.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param operatorPrincipalType string = 'User'

var roles = {
  'Storage Blob Data Owner': 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  'Storage Queue Data Contributor': '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  'Storage Queue Data Reader': '19e7f393-937e-4f77-808e-94535e297925'
  'Storage Queue Data Message Sender': 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  'Storage Queue Data Message Processor': '8a0f0c08-91a1-4084-bc3d-661d67233fed'
  'Storage Table Data Contributor': '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  'Storage Table Data Reader': '76199698-9eea-4c19-bc75-cec21354c6b6'
  'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb'
  'Key Vault Secrets User': '4633458b-17de-408a-b874-0445c86b69e6'
  'Key Vault Secrets Officer': 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
}

var hasOperator = !empty(operatorPrincipalId)
var useLogs = !empty(dataCollectionRuleName)
var poisonQueueNames = map(queueNames, queue => '${queue}-poison')
var allQueueNames = concat(queueNames, poisonQueueNames)

resource storageAccount 'Microsoft.Storage/storageAccounts@2026-04-01' existing = {
  name: storageAccountName
}

resource queueServices 'Microsoft.Storage/storageAccounts/queueServices@2026-04-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2026-04-01' existing = [
  for name in queueNames: {
    parent: queueServices
    name: name
  }
]

resource poisonQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2026-04-01' existing = [
  for name in poisonQueueNames: {
    parent: queueServices
    name: name
  }
]

resource everyQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2026-04-01' existing = [
  for name in allQueueNames: {
    parent: queueServices
    name: name
  }
]

resource tableServices 'Microsoft.Storage/storageAccounts/tableServices@2026-04-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource runStateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2026-04-01' existing = {
  parent: tableServices
  name: runStateTableName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2026-02-01' existing = {
  name: keyVaultName
}

resource dataCollectionRule 'Microsoft.Insights/dataCollectionRules@2024-03-11' existing = if (useLogs) {
  name: dataCollectionRuleName
}

// --- the function app's identity ------------------------------------------------------------

// Account scope, not a container: the Functions host creates its own containers (leases, host
// keys) at run time next to the deployment-package and claim-check containers, and needs to own
// blobs in each.
resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, managedIdentityPrincipalId, roles['Storage Blob Data Owner'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Blob Data Owner'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Functions host storage, the deployment package and claim-check payloads'
  }
}

// Queue scope: ingest enqueues, the trigger receives and deletes, retries re-enqueue with a delay,
// the host dead-letters to the poison queue.
resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, i) in allQueueNames: {
    name: guid(everyQueue[i].id, managedIdentityPrincipalId, roles['Storage Queue Data Contributor'])
    scope: everyQueue[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Contributor'])
      principalId: managedIdentityPrincipalId
      principalType: 'ServicePrincipal'
      description: 'Deliver through ${name}'
    }
  }
]

// Table scope: the run-state table is the only table the bridge uses.
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(runStateTable.id, managedIdentityPrincipalId, roles['Storage Table Data Contributor'])
  scope: runStateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Table Data Contributor'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Latest accepted and delivered state per (script, device) and destination'
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

// Rule scope: the Logs Ingestion API accepts rows for this one rule (the logs destination).
resource logsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (useLogs) {
  name: guid(dataCollectionRule.id, managedIdentityPrincipalId, roles['Monitoring Metrics Publisher'])
  scope: dataCollectionRule
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Monitoring Metrics Publisher'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Upload rows to the IntuneComplianceScriptState_CL stream'
  }
}

// Vault scope rather than the secret: the secret may be created after the deployment (see
// docs/operations.md), and a role on a missing secret cannot be assigned. The vault holds only
// this bridge's secrets, so the reach is the same.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (useHmac) {
  name: guid(vault.id, managedIdentityPrincipalId, roles['Key Vault Secrets User'])
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Key Vault Secrets User'])
    principalId: managedIdentityPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Resolve the BRIDGE_HMAC_SECRETS Key Vault reference'
  }
}

// --- the operator ---------------------------------------------------------------------------
// What the runbook's commands need and nothing more (none of them creates anything):
// replay receives and deletes poison messages and sends them to the destination queue; status
// peeks every queue, reads its properties and reads the run-state table; doctor reads the table
// and may peek queues. Rotating the HMAC secrets needs the vault's Secrets Officer.

// Peek messages and read the approximate message count of every queue (status, doctor).
resource operatorQueueReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, i) in allQueueNames: if (hasOperator) {
    name: guid(everyQueue[i].id, operatorPrincipalId, roles['Storage Queue Data Reader'])
    scope: everyQueue[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Reader'])
      principalId: operatorPrincipalId
      principalType: operatorPrincipalType
      description: 'Peek ${name} and read its depth (status, doctor)'
    }
  }
]

// Receive and delete dead letters (replay).
resource operatorPoisonProcessor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, i) in poisonQueueNames: if (hasOperator) {
    name: guid(poisonQueues[i].id, operatorPrincipalId, roles['Storage Queue Data Message Processor'])
    scope: poisonQueues[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Message Processor'])
      principalId: operatorPrincipalId
      principalType: operatorPrincipalType
      description: 'Receive and remove dead letters of ${name} when replaying them'
    }
  }
]

// Put replayed reports back on their destination queue (replay).
resource operatorQueueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, i) in queueNames: if (hasOperator) {
    name: guid(queues[i].id, operatorPrincipalId, roles['Storage Queue Data Message Sender'])
    scope: queues[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Queue Data Message Sender'])
      principalId: operatorPrincipalId
      principalType: operatorPrincipalType
      description: 'Send replayed reports to ${name}'
    }
  }
]

// Read the run state, the 429 gate and budget rows (status, doctor); never write them.
resource operatorTableReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator) {
  name: guid(runStateTable.id, operatorPrincipalId, roles['Storage Table Data Reader'])
  scope: runStateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Storage Table Data Reader'])
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'Read the run-state table (status, doctor)'
  }
}

// Set and rotate the HMAC secrets; nobody else needs to write them.
resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasOperator && useHmac) {
  name: guid(vault.id, operatorPrincipalId, roles['Key Vault Secrets Officer'])
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles['Key Vault Secrets Officer'])
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    description: 'Set and rotate the HMAC secrets'
  }
}
