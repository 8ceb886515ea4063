// Log alerts, one per failure mode in the runbook (docs/operations.md): on the Application Insights
// component (its classic tables) and, with the logs destination, on the workspace (the custom
// table). The KQL lives in infra/queries so the alerts, the workbook and the docs run the same text.

@description('Azure region of the alert rules (the component\'s region).')
param location string

@description('Tags applied to the alert rules and the action group.')
param tags object

@description('Name of the Application Insights component the rules query.')
param applicationInsightsName string

@description('Name of the Log Analytics workspace holding the logs destination\'s table.')
param logAnalyticsName string

@description('Whether the logs destination (and so its table) exists: only then is the silent-devices rule created.')
param useLogs bool

@description('How often Intune runs the detection scripts, as a KQL timespan literal such as 8h: a device is silent after twice this.')
param scriptInterval string = '8h'

@description('Prefix of the alert rule names.')
param namePrefix string

@description('Name of the action group that notifies operators.')
param actionGroupName string

@description('E-mail address alerts go to; empty creates the rules without notifications.')
param alertEmail string = ''

@description('Graph 429/5xx retries within 15 minutes that raise the throttling alert.')
@minValue(1)
param throttledRetriesThreshold int = 50

@description('Failed function invocations within 15 minutes that raise the failure alert.')
@minValue(1)
param failedInvocationsThreshold int = 5

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2026-03-01' existing = {
  name: logAnalyticsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'bridge'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroupIds = empty(alertEmail) ? [] : [
  resourceId('Microsoft.Insights/actionGroups', actionGroupName)
]

// overrideQueryTimeRange: empty keeps the window; scope: the resource whose tables the query reads.
var componentRules = [
  {
    name: 'poisoned'
    displayName: 'Bridge: reports dead-lettered'
    description: 'A report went to a destination\'s poison queue. Runbook: docs/operations.md#poison-messages'
    severity: 2
    query: loadTextContent('../queries/alert-poisoned.kql')
    threshold: 0
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    overrideQueryTimeRange: ''
    scope: applicationInsights.id
  }
  {
    name: 'endpoint-unsupported'
    displayName: 'Bridge: Graph refuses the run-state PATCH'
    description: 'Graph answered "No method match route template". Runbook: docs/operations.md#endpoint_unsupported'
    severity: 2
    query: loadTextContent('../queries/alert-endpoint-unsupported.kql')
    threshold: 0
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    overrideQueryTimeRange: ''
    scope: applicationInsights.id
  }
  {
    name: 'graph-throttling'
    displayName: 'Bridge: Graph throttling or server errors'
    description: 'Graph answered 429 or 5xx more often than expected. Runbook: docs/operations.md#throttling'
    severity: 3
    query: loadTextContent('../queries/alert-graph-throttling.kql')
    threshold: throttledRetriesThreshold
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    overrideQueryTimeRange: ''
    scope: applicationInsights.id
  }
  {
    name: 'function-failures'
    displayName: 'Bridge: function invocations failing'
    description: 'Function invocations failed. Runbook: docs/operations.md#function-failures'
    severity: 1
    query: loadTextContent('../queries/alert-function-failures.kql')
    threshold: failedInvocationsThreshold
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    overrideQueryTimeRange: ''
    scope: applicationInsights.id
  }
]

// Devices whose newest row is older than twice the script interval. A rule's query sees at most
// its time range, so the rule looks back 2 days: it fires while a device has been silent between
// 2x the interval and 2 days (the workbook's view lists older silence too).
var silentDevicesRule = {
  name: 'devices-silent'
  displayName: 'Bridge: devices stopped reporting'
  description: 'Devices sent no report for twice the script interval. Runbook: docs/operations.md#silent-devices'
  severity: 3
  query: replace(loadTextContent('../queries/alert-devices-silent.kql'), 'let scriptInterval = 8h;', 'let scriptInterval = ${scriptInterval};')
  threshold: 0
  evaluationFrequency: 'PT1H'
  windowSize: 'PT1H'
  overrideQueryTimeRange: 'P2D'
  scope: useLogs ? workspace.id : ''
}

var rules = concat(componentRules, useLogs ? [silentDevicesRule] : [])

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2026-03-01' = [
  for rule in rules: {
    name: '${namePrefix}${rule.name}'
    location: location
    tags: tags
    kind: 'LogAlert'
    dependsOn: [
      actionGroup
    ]
    properties: {
      displayName: rule.displayName
      description: rule.description
      severity: rule.severity
      enabled: true
      evaluationFrequency: rule.evaluationFrequency
      windowSize: rule.windowSize
      overrideQueryTimeRange: empty(rule.overrideQueryTimeRange) ? null : rule.overrideQueryTimeRange
      // Component scope for the classic table names (customEvents, requests); workspace scope for
      // the custom table.
      scopes: [
        rule.scope
      ]
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: rule.threshold
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: true
      actions: {
        actionGroups: actionGroupIds
      }
    }
  }
]

output ruleNames array = [for i in range(0, length(rules)): alertRules[i].name]
