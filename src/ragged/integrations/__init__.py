"""Ways into ragged from other tools: an MCP server for assistants, a LangChain retriever."""
