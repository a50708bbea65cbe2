"""Backends: cpu (Numba njit, parallel), cuda (numba.cuda), torch (the fast torch path)."""
