// The bridge itself: a Flex Consumption plan and the Python function app on it, with every app
// setting the code reads. Runs as the user-assigned identity only; holds no keys or secrets.

@description('Name of the function app.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region of the plan and the app.')
param location string

@description('Tags applied to the plan and the app (the app also gets azd-service-name).')
param tags object

@description('Resource id of the user-assigned managed identity the app runs as.')
param identityId string

@description('Client id of that identity (AZURE_CLIENT_ID, storage and telemetry credentials).')
param identityClientId string

@description('Name of the storage account for the host, the package, queues and the table.')
param storageAccountName string

@description('Blob container the platform deploys the app package from.')
param deploymentContainerName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Python version of the Flex Consumption runtime.')
param runtimeVersion string

@description('Memory per instance in MB (Flex Consumption instance size).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('Upper bound on instances the platform may scale out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int

@description('Require a client certificate in the TLS handshake (mTLS) on this app.')
param enforceClientCertificate bool

@description('Versionless Key Vault URI of the HMAC secrets; empty when hmac is not among the auth modes (then no Key Vault reference is set).')
param hmacSecretUri string = ''

@description('The bridge\'s own settings (BRIDGE_*), merged under the host settings below.')
param bridgeSettings object

resource storage 'Microsoft.Storage/storageAccounts@2026-04-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2025-03-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource site 'Microsoft.Web/sites@2025-03-01' = {
  name: name
  location: location
  // azd deploys the `api` service of azure.yaml to the resource carrying this tag.
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    // Agents send device credentials and signatures: plain HTTP is redirected, never served.
    httpsOnly: true
    // Key Vault references resolve as the user-assigned identity (there is no system identity).
    keyVaultReferenceIdentity: identityId
    // Certificate mode (BRIDGE_AUTH_MODE contains `certificate`) needs the front end to demand a
    // client certificate and pass it on as X-ARR-ClientCert; `Required` is the only mode in which
    // the TLS handshake proves the device holds the key. Both properties are sent only then (null
    // leaves them out). No exclusion paths: they force TLS renegotiation, which HTTP/2 and TLS 1.3
    // cannot do and which breaks POSTs over about 100 KB (reports can be 2 MiB). Whether Flex
    // Consumption honours these settings is unconfirmed: main.bicep's certificateFront parameter
    // moves the check to an external front instead (see docs/operations.md).
    clientCertEnabled: enforceClientCertificate ? true : null
    clientCertMode: enforceClientCertificate ? 'Required' : null
    siteConfig: {
      // TLS 1.0/1.1 have known weaknesses and no agent needs them.
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      // No ftpsState: Flex Consumption rejects it in newer regions (ARM 51021). FTP and SCM
      // publishing with a password are off below (basicPublishingCredentialsPolicies).
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          // The platform fetches the package as the identity: no SAS URL or account key.
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: runtimeVersion
      }
    }
  }
}

// Publishing with a user name and password is off: deployments authenticate with Entra ID.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2025-03-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2025-03-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// Settings owned by the platform wiring. Flex Consumption rejects the worker-runtime, extension-
// version, run-from-package, content-share and build settings of the older plans, so none of
// them appear here: the runtime comes from functionAppConfig instead.
var hostSettings = {
  // Identity-based host storage: no connection string, so no account key, exists anywhere.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
  // The connection string only locates the component; with local auth off it cannot ingest alone.
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  // Ingestion authenticates as the user-assigned identity (Monitoring Metrics Publisher).
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // The Python worker configures the Azure Monitor exporter itself.
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // azure-identity's ManagedIdentityCredential picks the user-assigned identity by its client id.
  AZURE_CLIENT_ID: identityClientId
}

// A Key Vault reference, only in hmac mode: the platform resolves it as keyVaultReferenceIdentity,
// so the secrets never appear in app settings, deployment history or this template; in any other
// mode an unresolved reference could only get in the way.
var hmacSettings = empty(hmacSecretUri) ? {} : {
  BRIDGE_HMAC_SECRETS: '@Microsoft.KeyVault(SecretUri=${hmacSecretUri})'
}

resource appSettings 'Microsoft.Web/sites/config@2025-03-01' = {
  parent: site
  name: 'appsettings'
  properties: union(bridgeSettings, hostSettings, hmacSettings)
}

output name string = site.name
output uri string = 'https://${site.properties.defaultHostName}'
