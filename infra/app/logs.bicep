// The logs destination: a Log Analytics custom table holding one row per accepted report, and the
// data collection rule the bridge uploads those rows through (Logs Ingestion API). The rule is of
// kind Direct, so it carries its own logs ingestion endpoint and no data collection endpoint is
// needed. The columns are the contract of DESIGN.md ("Destinations": logs).

@description('Azure region of the rule (the workspace\'s region).')
param location string

@description('Tags applied to the rule.')
param tags object

@description('Name of the Log Analytics workspace the table lives in.')
param logAnalyticsName string

@description('Name of the data collection rule.')
@minLength(3)
@maxLength(64)
param ruleName string

@description('Name of the custom table (ends in _CL).')
param tableName string

@description('Stream the rule accepts: Custom-<tableName> (BRIDGE_LOGS_STREAM).')
param streamName string

@description('Days the table keeps its rows in interactive retention.')
@minValue(4)
@maxValue(730)
param retentionInDays int

// One column list, typed twice: the table names the date type `dateTime`, a stream `datetime`.
var columns = [
  { name: 'TimeGenerated', type: 'datetime', description: 'When the bridge accepted the report' }
  { name: 'ReportId', type: 'string', description: 'The report id (correlates with telemetry)' }
  { name: 'ScriptId', type: 'string', description: 'Compliance script id' }
  { name: 'DeviceId', type: 'string', description: 'Intune managed device id' }
  { name: 'DetectionState', type: 'string', description: 'Mapped detectionState' }
  { name: 'LastStateUpdateDateTime', type: 'datetime', description: 'When the script ran on the device' }
  { name: 'ExpectedStateUpdateDateTime', type: 'datetime', description: 'When the next run is due' }
  { name: 'LastSyncDateTime', type: 'datetime', description: 'Last Intune sync the agent saw' }
  { name: 'ScriptOutput', type: 'string', description: 'Script stdout (truncated to the bridge\'s limit)' }
  { name: 'ScriptError', type: 'string', description: 'Script stderr or the bridge\'s note' }
  { name: 'AgentVersion', type: 'string', description: 'Version of the reporting agent' }
]

resource workspace 'Microsoft.OperationalInsights/workspaces@2026-03-01' existing = {
  name: logAnalyticsName
}

resource table 'Microsoft.OperationalInsights/workspaces/tables@2026-03-01' = {
  parent: workspace
  name: tableName
  properties: {
    plan: 'Analytics'
    retentionInDays: retentionInDays
    schema: {
      name: tableName
      description: 'Intune compliance-script results, one row per accepted report (intune-compliance-bridge)'
      columns: [
        for column in columns: {
          name: column.name
          type: column.type == 'datetime' ? 'dateTime' : column.type
          description: column.description
        }
      ]
    }
  }
}

resource rule 'Microsoft.Insights/dataCollectionRules@2024-03-11' = {
  name: ruleName
  location: location
  tags: tags
  kind: 'Direct'
  // The table must exist before a data flow can name it as its output stream.
  dependsOn: [
    table
  ]
  properties: {
    description: 'Rows of the intune-compliance-bridge logs destination'
    streamDeclarations: {
      '${streamName}': {
        columns: [
          for column in columns: {
            name: column.name
            type: column.type
          }
        ]
      }
    }
    destinations: {
      logAnalytics: [
        {
          name: 'workspace'
          workspaceResourceId: workspace.id
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          streamName
        ]
        destinations: [
          'workspace'
        ]
        // The rows already have the table's shape; the bridge sends TimeGenerated itself.
        transformKql: 'source'
        outputStream: streamName
      }
    ]
  }
}

output ruleName string = rule.name
output immutableId string = rule.properties.immutableId
// The ingestion endpoint of a Direct rule: BRIDGE_LOGS_ENDPOINT.
output logsIngestionEndpoint string = rule.properties.endpoints.logsIngestion
