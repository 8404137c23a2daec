"""Azure Functions adapters (see ``functions.azure.function_app``)."""
