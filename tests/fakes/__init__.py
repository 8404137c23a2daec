"""Loopback servers that answer the requests real cloud SDK clients send (Cloud Run Admin API v2,
Azure Resource Manager, ...), shared by the backend and autoscaler tests."""
