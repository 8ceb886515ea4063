// A shared workbook on the Application Insights component: detection states per script, delivery
// latency, and outcomes with their reasons over time; with the logs destination also a compliance
// view over its table in the workspace. Each tile runs a query from infra/queries, the same text
// the docs show.

@description('Azure region of the workbook.')
param location string

@description('Tags applied to the workbook.')
param tags object

@description('Name of the Application Insights component the workbook reads.')
param applicationInsightsName string

@description('Name of the Log Analytics workspace holding the logs destination\'s table.')
param logAnalyticsName string

@description('Whether the logs destination (and so its table) exists: only then are the compliance tiles added.')
param useLogs bool

@description('How often Intune runs the detection scripts, as a KQL timespan literal such as 8h.')
param scriptInterval string = '8h'

@description('Title shown in the portal\'s workbook gallery.')
param displayName string

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2026-03-01' existing = {
  name: logAnalyticsName
}

var componentType = 'microsoft.insights/components'
var workspaceType = 'microsoft.operationalinsights/workspaces'

var tiles = [
  {
    name: 'states-by-script'
    title: 'Latest detection state per device, by script'
    query: loadTextContent('../queries/workbook-states-by-script.kql')
    visualization: 'table'
  }
  {
    name: 'delivery-latency'
    title: 'Delivery latency (ms): p50, p95, p99'
    query: loadTextContent('../queries/workbook-delivery-latency.kql')
    visualization: 'timechart'
  }
  {
    name: 'outcomes-over-time'
    title: 'Outcomes and reasons over time'
    query: loadTextContent('../queries/workbook-outcomes-over-time.kql')
    visualization: 'timechart'
  }
  {
    name: 'reasons'
    title: 'Reasons reports were ignored, retried, rejected or dead-lettered'
    query: loadTextContent('../queries/workbook-reasons.kql')
    visualization: 'table'
  }
]

// The compliance view: the logs destination's table, queried in the workspace.
var complianceTiles = [
  {
    name: 'compliance-states-over-time'
    title: 'Devices per script and detection state over time'
    query: loadTextContent('../queries/workbook-compliance-states-over-time.kql')
    visualization: 'timechart'
  }
  {
    name: 'compliance-latest'
    title: 'Newest state per device'
    query: loadTextContent('../queries/workbook-compliance-latest.kql')
    visualization: 'table'
  }
  {
    name: 'compliance-silent'
    title: 'Devices silent for more than twice the script interval'
    query: replace(loadTextContent('../queries/workbook-compliance-silent.kql'), 'let scriptInterval = 8h;', 'let scriptInterval = ${scriptInterval};')
    visualization: 'table'
  }
]

var timeRangeParameter = {
  type: 9
  name: 'parameters'
  content: {
    version: 'KqlParameterItem/1.0'
    style: 'pills'
    queryType: 0
    resourceType: componentType
    parameters: [
      {
        id: guid('bridge-workbook', 'TimeRange')
        version: 'KqlParameterItem/1.0'
        name: 'TimeRange'
        label: 'Time range'
        type: 4
        isRequired: true
        value: {
          durationMs: 86400000
        }
        typeSettings: {
          allowCustom: true
          selectableValues: [
            { durationMs: 3600000 }
            { durationMs: 14400000 }
            { durationMs: 86400000 }
            { durationMs: 604800000 }
            { durationMs: 2592000000 }
          ]
        }
      }
    ]
  }
}

var queryItems = [
  for tile in tiles: {
    type: 3
    name: tile.name
    content: {
      version: 'KqlItem/1.0'
      title: tile.title
      query: tile.query
      size: 0
      queryType: 0
      resourceType: componentType
      timeContextFromParameter: 'TimeRange'
      visualization: tile.visualization
    }
  }
]

var complianceItems = [
  for tile in complianceTiles: {
    type: 3
    name: tile.name
    content: {
      version: 'KqlItem/1.0'
      title: tile.title
      query: tile.query
      size: 0
      queryType: 0
      resourceType: workspaceType
      crossComponentResources: [
        workspace.id
      ]
      timeContextFromParameter: 'TimeRange'
      visualization: tile.visualization
    }
  }
]

var workbookContent = {
  version: 'Notebook/1.0'
  isLocked: false
  fallbackResourceIds: [
    applicationInsights.id
  ]
  items: concat(
    [
      {
        type: 1
        name: 'title'
        content: {
          json: '## Intune compliance-script bridge\nEvents the bridge emits (see infra/telemetry-contract.json) for the selected time range.'
        }
      }
      timeRangeParameter
    ],
    queryItems,
    useLogs ? complianceItems : []
  )
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // Workbook resource names must be GUIDs; this one is stable per component.
  name: guid(applicationInsights.id, 'intune-compliance-bridge-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsights.id
    serializedData: string(workbookContent)
  }
}

output workbookId string = workbook.id
