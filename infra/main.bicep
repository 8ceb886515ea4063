// Intune compliance-script bridge: everything `azd up` (or `az deployment sub create`) provisions.
// This file orchestrates; each module under app/ owns one thing. See docs/operations.md.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); seeds the resource group name and the token in every resource name.')
param environmentName string

@minLength(1)
@description('Region for all resources; only regions that offer Flex Consumption are allowed (az functionapp list-flexconsumption-locations).')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Principal (object) id of the operator (azd: AZURE_PRINCIPAL_ID, whoever deploys); receives the rights replay, status and doctor need, and Key Vault Secrets Officer in hmac mode. Empty grants nothing.')
@maxLength(36)
param principalId string = ''

@description('Kind of principal principalId is: User for a person, ServicePrincipal for a pipeline.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Name of the resource group; empty derives rg-<environmentName>.')
param resourceGroupName string = ''

@description('Microsoft Graph national cloud the tenant lives in (BRIDGE_GRAPH_CLOUD); decides the Graph root and token audience.')
@allowed([
  'Global'
  'USGovL4'
  'USGovL5DoD'
  'China'
])
param graphCloud string = 'Global'

@description('How devices authenticate (BRIDGE_AUTH_MODE): certificate, hmac, function, or a comma-separated combination such as certificate,hmac.')
@minLength(1)
param authMode string = 'hmac'

@description('Trusted Intune issuing CA certificates for certificate mode (BRIDGE_TRUSTED_CA_CERTS): PEM text, or the path of a PEM file inside the deployed package such as certs/intune-ca.pem. Required when authMode contains certificate.')
param trustedCaCerts string = ''

@description('Tenant whose device certificates certificate mode accepts (BRIDGE_TENANT_ID); empty means the tenant of this deployment. Unused unless authMode contains certificate.')
@maxLength(36)
param certificateTenantId string = ''

@description('Where client certificates are demanded when authMode contains certificate: functionApp sets clientCertEnabled/Required on the Flex Consumption app (unconfirmed whether Flex honours it: test before relying on it); external leaves the app without mTLS because a front such as API Management or Application Gateway validates the certificate and forwards it.')
@allowed([
  'functionApp'
  'external'
])
param certificateFront string = 'functionApp'

@description('Where accepted reports go (BRIDGE_DESTINATIONS), comma-separated: graph (the deviceRunStates PATCH), logs (a Log Analytics custom table), entra (a device extension attribute).')
@minLength(1)
param destinations string = 'graph'

@description('Script-to-attribute map for the entra destination (BRIDGE_ENTRA_ATTRIBUTES): <scriptId>=<1..15> pairs, comma-separated. Required when destinations contains entra.')
param entraAttributes string = ''

@description('Days the custom table of the logs destination keeps its rows (interactive retention).')
@minValue(4)
@maxValue(730)
param logsRetentionInDays int = 90

@description('An unchanged state is rewritten to graph and entra only this often (BRIDGE_REFRESH_INTERVAL), e.g. 8h; 0 writes every report.')
param refreshInterval string = '8h'

@description('queue: accept with 202 and deliver from the destination queues; sync: deliver inline and answer with Graph\'s outcome (BRIDGE_DELIVERY_MODE).')
@allowed([
  'queue'
  'sync'
])
param deliveryMode string = 'queue'

@description('Graph writes per second across all instances (BRIDGE_GRAPH_WRITES_PER_SECOND). Intune allows 200 writes per 20 s per app per tenant, about 10/s; 8 leaves headroom.')
@minValue(1)
@maxValue(10)
param graphWritesPerSecond int = 8

@description('Reports one device may send per minute before getting 429 (BRIDGE_DEVICE_RATE_LIMIT); 0 turns the limit off.')
@minValue(0)
param deviceRateLimit int = 60

@description('Python version of the Flex Consumption runtime: 3.13, the version the test suite runs on (Makefile, CI) and the first whose host worker (azure-functions-runtime) the tests can run.')
@allowed([
  '3.13'
])
param pythonVersion string = '3.13'

@description('Memory per Flex Consumption instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// Scale-out and concurrency fit the shared write budget: every instance draws from one budget in
// the run-state table (about 8 writes/s for the whole app), and a message that would wait more
// than 3 s for it is handed back to the queue instead of idling. So more instances add no Graph
// throughput, only polling; the platform's minimum bound (40) is the right default, and host.json
// keeps each instance at 12 messages in flight (batchSize 8 + newBatchThreshold 4).
@description('Most instances Flex Consumption may scale out to (40-1000). Graph writes stay paced to graphWritesPerSecond whatever the count.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Compliance script ids (GUIDs) the bridge accepts reports for (BRIDGE_ALLOWED_SCRIPT_IDS); empty accepts every script.')
param allowedScriptIds array = []

@description('How the Graph run-state id is built from the script and device ids (BRIDGE_RUN_STATE_ID_TEMPLATE), or lookup to list deviceRunStates by device.')
param runStateIdTemplate string = '{scriptId}:{deviceId}'

@description('With runStateIdTemplate=lookup: the template written when the list names no run state for the device (BRIDGE_RUN_STATE_LOOKUP_FALLBACK); empty poisons such reports instead.')
param runStateLookupFallback string = ''

@description('How often Intune runs the detection scripts (BRIDGE_SCRIPT_INTERVAL), used for expectedStateUpdateDateTime and the silent-devices alert: a number and a unit (d, h, m or s), e.g. 8h, which KQL reads as a timespan too.')
param scriptInterval string = '8h'

@secure()
@description('Initial HMAC secrets (Standard Webhooks whsec_..., comma-separated) stored in Key Vault; empty keeps whatever the vault holds. Rotate with az keyvault secret set (docs/operations.md).')
param hmacSecrets string = ''

@description('E-mail address that receives the bridge\'s alerts; empty creates the alert rules without notifications.')
param alertEmail string = ''

@description('Grant the managed identity its Graph app roles (DeviceManagementConfiguration.ReadWrite.All; Device.ReadWrite.All with the entra destination) with the Microsoft Graph Bicep extension. Needs Entra admin rights; otherwise leave false and run infra/scripts/grant-graph-permission.sh.')
param grantGraphPermission bool = false

@description('Changes the Key Vault name. Purge protection keeps a deleted vault\'s name taken for 90 days, so an environment recreated after azd down needs a salt (or az keyvault recover). Empty keeps the default name.')
@maxLength(24)
param keyVaultNameSalt string = ''

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.webSitesFunctions}api-${resourceToken}'
// Flex Consumption deploys from a blob container; name copied from the azd Flex template.
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'
// A salt gives the vault a new name when the old one is held by purge protection.
var keyVaultToken = empty(keyVaultNameSalt) ? resourceToken : toLower(uniqueString(resourceToken, keyVaultNameSalt))
// Lists are read the way the code reads them (shared/settings.py): comma, semicolon or blank separated.
var enabledDestinations = filter(map(split(toLower(destinations), [',', ';', ' ']), item => trim(item)), item => !empty(item))
var authModes = filter(map(split(toLower(authMode), [',', ';', ' ']), item => trim(item)), item => !empty(item))
var useLogs = contains(enabledDestinations, 'logs')
var useEntra = contains(enabledDestinations, 'entra')
var useCertificate = contains(authModes, 'certificate')
var useHmac = contains(authModes, 'hmac')
// One queue per destination; the queue trigger dead-letters to <queue>-poison. The names are the
// bridge's contract (DESIGN.md, shared/store.py); every one exists whatever is enabled, so turning a
// destination on later needs no storage change.
var destinationQueues = {
  graph: 'compliance-results'
  logs: 'compliance-logs'
  entra: 'compliance-entra'
}
var runStateTableName = 'runstates'
// Reports over the inline queue-message limit travel as blobs here (claim check).
var payloadContainerName = 'compliance-payloads'
var hmacSecretName = 'bridge-hmac-secrets'
// The logs destination's table and the stream the data collection rule accepts for it.
var logsTableName = 'IntuneComplianceScriptState_CL'
var logsStreamName = 'Custom-${logsTableName}'
// mTLS on the app itself only when devices use certificates and no external front checks them.
var enforceClientCertificate = useCertificate && certificateFront == 'functionApp'
// Graph application permissions by destination: the run-state PATCH, the device attribute PATCH.
var graphAppRoles = concat(
  ['DeviceManagementConfiguration.ReadWrite.All'],
  useEntra ? ['Device.ReadWrite.All'] : []
)

// The bridge's own settings; the host wiring (storage, telemetry, identity, Key Vault reference)
// is added in app/api.bicep. Values equal the code's defaults unless a parameter says otherwise;
// an empty value means the code's default (Settings.from_env ignores blank settings).
var bridgeSettings = {
  BRIDGE_GRAPH_CLOUD: graphCloud
  BRIDGE_CREDENTIAL: 'managed_identity'
  BRIDGE_DELIVERY_MODE: deliveryMode
  BRIDGE_DESTINATIONS: join(enabledDestinations, ',')
  BRIDGE_AUTH_MODE: authMode
  BRIDGE_TRUSTED_CA_CERTS: trustedCaCerts
  // Certificate mode: the Intune device CA issues for every tenant, so the tenant is checked too.
  BRIDGE_TENANT_ID: useCertificate ? (empty(certificateTenantId) ? tenant().tenantId : certificateTenantId) : ''
  BRIDGE_DEVICE_RATE_LIMIT: string(deviceRateLimit)
  BRIDGE_GRAPH_WRITES_PER_SECOND: string(graphWritesPerSecond)
  BRIDGE_MAX_BODY_BYTES: '2097152'
  BRIDGE_MAX_OUTPUT_CHARS: '1048576'
  BRIDGE_SCRIPT_INTERVAL: scriptInterval
  BRIDGE_REFRESH_INTERVAL: refreshInterval
  BRIDGE_CLOCK_SKEW: '5m'
  BRIDGE_RUN_STATE_ID_TEMPLATE: runStateIdTemplate
  BRIDGE_RUN_STATE_LOOKUP_FALLBACK: runStateLookupFallback
  BRIDGE_ALLOWED_SCRIPT_IDS: join(allowedScriptIds, ',')
  BRIDGE_LOGS_ENDPOINT: useLogs ? logsIngestion.outputs.logsIngestionEndpoint : ''
  BRIDGE_LOGS_RULE_ID: useLogs ? logsIngestion.outputs.immutableId : ''
  BRIDGE_LOGS_STREAM: logsStreamName
  BRIDGE_ENTRA_ATTRIBUTES: entraAttributes
  BRIDGE_GRAPH_CONNECT_TIMEOUT: '3.05'
  BRIDGE_GRAPH_READ_TIMEOUT: '15'
  BRIDGE_SYNC_ATTEMPTS: '3'
  BRIDGE_SYNC_MAX_WAIT: '10s'
  BRIDGE_MAX_ATTEMPTS: '20'
  BRIDGE_MAX_AGE: '24h'
  BRIDGE_DELIVERY_LEASE: '60s'
  BRIDGE_TELEMETRY_SCRIPT_OUTPUT: 'false'
}

resource rg 'Microsoft.Resources/resourceGroups@2025-04-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    payloadContainerName: payloadContainerName
    queueNames: [for queue in items(destinationQueues): queue.value]
    runStateTableName: runStateTableName
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${keyVaultToken}'
    location: location
    tags: tags
    hmacSecretName: hmacSecretName
    hmacSecrets: hmacSecrets
  }
}

// The logs destination: a custom table and the data collection rule the app ingests through.
module logsIngestion 'app/logs.bicep' = if (useLogs) {
  name: 'logsIngestion'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    ruleName: '${abbrs.insightsDataCollectionRules}${resourceToken}'
    tableName: logsTableName
    streamName: logsStreamName
    retentionInDays: logsRetentionInDays
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    // The app needs only the queues of enabled destinations; the operator the same.
    queueNames: [for destination in enabledDestinations: destinationQueues[destination]]
    runStateTableName: runStateTableName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyVault.outputs.name
    dataCollectionRuleName: useLogs ? logsIngestion.outputs.ruleName : ''
    useHmac: useHmac
    managedIdentityPrincipalId: identity.outputs.principalId
    operatorPrincipalId: principalId
    operatorPrincipalType: principalType
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  // Roles first: the app resolves its Key Vault reference and opens storage as soon as it starts.
  dependsOn: [
    rbac
  ]
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    runtimeVersion: pythonVersion
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    enforceClientCertificate: enforceClientCertificate
    // The Key Vault reference is set only when hmac is on: an unresolved one must not touch other modes.
    hmacSecretUri: useHmac ? keyVault.outputs.hmacSecretUri : ''
    bridgeSettings: bridgeSettings
  }
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  // A rule's query is validated when it is created, so the custom table must exist first.
  dependsOn: [
    logsIngestion
  ]
  params: {
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    namePrefix: '${abbrs.insightsScheduledQueryRules}${resourceToken}-'
    actionGroupName: '${abbrs.insightsActionGroups}${resourceToken}'
    alertEmail: alertEmail
    // The silent-devices alert reads the logs destination's table, so it exists only with it.
    useLogs: useLogs
    scriptInterval: scriptInterval
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  dependsOn: [
    logsIngestion
  ]
  params: {
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    logAnalyticsName: monitoring.outputs.logAnalyticsName
    useLogs: useLogs
    scriptInterval: scriptInterval
    displayName: 'Intune compliance-script bridge (${environmentName})'
  }
}

// A new identity can take a while to replicate in Entra, so this first-run grant may fail with
// "principal does not exist": running azd provision again then succeeds (docs/operations.md).
module graphPermission 'app/graph-permission.bicep' = if (grantGraphPermission) {
  name: 'graphPermission'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    appRoleValues: graphAppRoles
  }
}

// Outputs azd stores in the environment (.azure/<env>/.env); none of them is a secret.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.vaultUri
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output BRIDGE_GRAPH_PERMISSION_GRANTED bool = grantGraphPermission
// What grant-graph-permission.sh must grant for the enabled destinations (space-separated).
output BRIDGE_GRAPH_APP_ROLES string = join(graphAppRoles, ' ')
