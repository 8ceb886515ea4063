// Log alerts on the Application Insights component, one per failure mode in the runbook
// (docs/operations.md). The KQL lives in infra/queries so the alerts, the workbook and the docs
// run the same text.

@description('Azure region of the alert rules (the component\'s region).')
param location string

@description('Tags applied to the alert rules and the action group.')
param tags object

@description('Name of the Application Insights component the rules query.')
param applicationInsightsName string

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

var rules = [
  {
    name: 'poisoned'
    displayName: 'Bridge: reports dead-lettered'
    description: 'A report went to compliance-results-poison. Runbook: docs/operations.md#poison-messages'
    severity: 2
    query: loadTextContent('../queries/alert-poisoned.kql')
    threshold: 0
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
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
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
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
      // Component scope: the queries use the classic table names (customEvents, requests).
      scopes: [
        applicationInsights.id
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
