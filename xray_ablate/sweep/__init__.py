"""Sweeps: plan the jobs, do the shared work once, resume, isolate failures, summarise."""
