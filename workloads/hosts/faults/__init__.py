"""Faults on a schedule, carried out where the run is: the schedule and the rules here, the
actions by the lab (:mod:`workloads.hosts.lab.inject`) and by a VM (:mod:`workloads.hosts.azure.inject`)."""
