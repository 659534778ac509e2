"""The API's routers, one module per resource; app.py includes each of them."""
