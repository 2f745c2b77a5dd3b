"""``ragged serve``: a resident search service with a web page.

One long-lived process holds the index and the query model under the
resource manager, batches queries that arrive together, and serves pages,
heat-maps, health, readiness and metrics over HTTP (Starlette on uvicorn).
"""
