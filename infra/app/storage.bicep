// Storage for the Functions host, the deployment package, the delivery queues and the run-state
// table. Reached only with Microsoft Entra ID (the managed identity); account keys are disabled.

@description('Name of the storage account (3-24 lowercase letters and digits).')
param name string

@description('Azure region of the storage account.')
param location string

@description('Tags applied to the storage account.')
param tags object

@description('Blob container that Flex Consumption deploys the app package from.')
param deploymentContainerName string

@description('Queue the ingest function writes accepted reports to.')
param queueName string

@description('Queue that holds reports which could not be delivered (dead letters).')
param poisonQueueName string

@description('Table holding the latest accepted and delivered state per (script, device).')
param runStateTableName string

resource storage 'Microsoft.Storage/storageAccounts@2025-01-01' = {
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
resource blobServices 'Microsoft.Storage/storageAccounts/blobServices@2025-01-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-01-01' = {
  parent: blobServices
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueServices 'Microsoft.Storage/storageAccounts/queueServices@2025-01-01' = {
  parent: storage
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2025-01-01' = {
  parent: queueServices
  name: queueName
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2025-01-01' = {
  parent: queueServices
  name: poisonQueueName
}

resource tableServices 'Microsoft.Storage/storageAccounts/tableServices@2025-01-01' = {
  parent: storage
  name: 'default'
}

resource runStateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2025-01-01' = {
  parent: tableServices
  name: runStateTableName
}

output name string = storage.name
output resourceId string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
