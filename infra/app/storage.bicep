// Storage for the Functions host, the deployment package, the destination queues, the run-state
// table and the claim-check payloads. Reached only with Microsoft Entra ID; account keys are disabled.
// Every queue, table and container the bridge uses is declared here: in Azure the app does not
// create them (a role scoped to one table is not documented to allow Create Table).

@description('Name of the storage account (3-24 lowercase letters and digits).')
param name string

@description('Azure region of the storage account.')
param location string

@description('Tags applied to the storage account.')
param tags object

@description('Blob container that Flex Consumption deploys the app package from.')
param deploymentContainerName string

@description('Blob container holding reports too large for a queue message (claim check).')
param payloadContainerName string

@description('Destination queues (one per destination); each gets its <queue>-poison queue, where the queue trigger dead-letters.')
param queueNames array

@description('Table holding the latest accepted and delivered state per (script, device).')
param runStateTableName string

resource storage 'Microsoft.Storage/storageAccounts@2026-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    // Identity-only access: no account keys or SAS that could leak from a settings file.
    allowSharedKeyAccess: false
    // Entra ID is also the default in the portal, so nobody falls back to keys by accident.
    defaultToOAuthAuthentication: true
    // Reports and packages are private; no container may ever be made anonymous.
    allowBlobPublicAccess: false
    // Refuse TLS 1.0/1.1 clients.
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowCrossTenantReplication: false
    accessTier: 'Hot'
    // Flex Consumption without a virtual network reaches storage over its public endpoint.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// Children are declared with `parent` rather than nested: pycep-parser, which the infra tests use,
// keeps only the last of several nested siblings.
resource blobServices 'Microsoft.Storage/storageAccounts/blobServices@2026-04-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2026-04-01' = {
  parent: blobServices
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource payloadContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2026-04-01' = {
  parent: blobServices
  name: payloadContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueServices 'Microsoft.Storage/storageAccounts/queueServices@2026-04-01' = {
  parent: storage
  name: 'default'
}

// The Functions host moves a message to <queue>-poison after maxDequeueCount tries.
var allQueueNames = concat(queueNames, map(queueNames, queue => '${queue}-poison'))

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2026-04-01' = [
  for name in allQueueNames: {
    parent: queueServices
    name: name
  }
]

resource tableServices 'Microsoft.Storage/storageAccounts/tableServices@2026-04-01' = {
  parent: storage
  name: 'default'
}

resource runStateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2026-04-01' = {
  parent: tableServices
  name: runStateTableName
}

output name string = storage.name
output resourceId string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
