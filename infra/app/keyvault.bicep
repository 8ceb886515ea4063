// Key Vault holding the HMAC secrets agents sign with (BRIDGE_HMAC_SECRETS). The function app reads
// them through a Key Vault reference, so the value never appears in app settings or deployments.

@description('Name of the key vault (3-24 characters).')
param name string

@description('Azure region of the key vault.')
param location string

@description('Tags applied to the key vault.')
param tags object

@description('Name of the secret holding the HMAC secrets.')
param hmacSecretName string

@secure()
@description('Initial HMAC secrets (comma-separated); empty leaves the secret to be set after deployment.')
param hmacSecrets string = ''

resource vault 'Microsoft.KeyVault/vaults@2026-02-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // Azure RBAC instead of access policies: the one rbac module grants who may read secrets.
    enableRbacAuthorization: true
    // A deleted vault or secret can be recovered for 90 days...
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // ...and nobody, not even an owner, can purge it early: device credentials cannot be destroyed
    // by mistake or by an attacker. (The vault name stays taken until the retention ends.)
    enablePurgeProtection: true
    // Flex Consumption without a virtual network resolves Key Vault references over the public
    // endpoint; access is still limited to Entra ID principals holding a role.
    publicNetworkAccess: 'Enabled'
  }
}

// Created only when a value is supplied, so a redeploy without it never overwrites rotated secrets.
resource hmacSecret 'Microsoft.KeyVault/vaults/secrets@2026-02-01' = if (!empty(hmacSecrets)) {
  parent: vault
  name: hmacSecretName
  properties: {
    value: hmacSecrets
    contentType: 'Standard Webhooks secrets (whsec_...), comma-separated, newest first'
  }
}

output name string = vault.name
output resourceId string = vault.id
output vaultUri string = vault.properties.vaultUri
// Versionless: the app follows rotations without a redeploy (see docs/operations.md).
output hmacSecretUri string = '${vault.properties.vaultUri}secrets/${hmacSecretName}'
