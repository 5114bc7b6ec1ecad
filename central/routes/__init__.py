"""The gateway's routers: each route reads its request, calls serving or the job store, answers."""
