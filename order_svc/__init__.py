"""order_svc: accounts, merchants and menus, orders and their state machine."""
