"""Who may do what: credentials, authentication, routes and their access levels, ownership, CORS."""
