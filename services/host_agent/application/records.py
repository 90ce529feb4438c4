"""The host agent's event store: Vm aggregates (sync; call via to_thread)."""
from __future__ import annotations

import threading
from typing import Any

from eventsourcing.persistence import IntegrityError

from common.eventstore import StoreApp

from ..domain.image_job import ImageJob, job_uuid
from ..domain.vm import Vm, vm_uuid


class VmRecords(StoreApp):
    name = "host_agent"

    def __init__(self, env: dict[str, str] | None = None):
        super().__init__(env=env)
        self._lock = threading.Lock()
        # sandbox -> (vcpus, MiB, org, state) of every VM holding resources
        self._active: dict[str, tuple[int, int, str, str]] | None = None

    def _save(self, *aggregates: Any) -> None:
        with self._lock:
            super()._save(*aggregates)
            if self._active is not None:
                for vm in aggregates:
                    _track(self._active, vm)

    def _held(self) -> list[tuple[str, tuple[int, int, str, str]]]:
        """Without reading the store: this agent is its only writer, so the
        view built once from the log stays exact."""
        with self._lock:
            if self._active is None:
                self._active = {}
                for vm in self.all_vms():
                    _track(self._active, vm)
            return list(self._active.items())

    def usage(self) -> tuple[int, int, int]:
        """(VMs holding resources, vCPUs, MiB)."""
        sizes = [v for _, v in self._held()]
        return len(sizes), sum(v[0] for v in sizes), sum(v[1] for v in sizes)

    def inventory(self) -> list[tuple[str, str, str]]:
        """(sandbox, org, state) of every VM holding resources here."""
        return [(sid, v[2], v[3]) for sid, v in self._held()]

    def get(self, sandbox_id: str) -> Vm | None:
        vm = self._get(vm_uuid(sandbox_id))
        return vm if isinstance(vm, Vm) else None

    def _vm(self, sandbox_id: str) -> Vm:
        vm: Vm = self.repository.get(vm_uuid(sandbox_id))
        return vm

    def accept(self, sandbox_id: str, org_id: str, spec: dict[str, Any],
               starting: dict[str, Any]) -> tuple[Vm, bool]:
        """Record that this host starts the sandbox; (vm, False) if it already did."""
        existing = self.get(sandbox_id)
        if existing is not None:
            return existing, False
        vm = Vm(sandbox_id, org_id, spec, starting)
        try:
            self._save(vm)
        except IntegrityError:  # accepted meanwhile by another handler
            return self._vm(sandbox_id), False
        return vm, True

    def record_resource(self, sandbox_id: str, kind: str, value: str | None) -> None:
        vm = self._vm(sandbox_id)
        vm.record_resource(kind, value)
        self._save(vm)

    def transition(self, sandbox_id: str, state: str, envelope: dict[str, Any] | None) -> Vm:
        vm = self._vm(sandbox_id)
        vm.transition(state, envelope)
        self._save(vm)
        return vm

    def note(self, sandbox_id: str, envelope: dict[str, Any]) -> Vm:
        vm = self._vm(sandbox_id)
        vm.note(envelope)
        self._save(vm)
        return vm

    # -- image builds -----------------------------------------------------------
    def job(self, image_id: str) -> ImageJob | None:
        job = self._get(job_uuid(image_id))
        return job if isinstance(job, ImageJob) else None

    def accept_job(self, image_id: str, org_id: str) -> tuple[ImageJob, bool]:
        existing = self.job(image_id)
        if existing is not None:
            return existing, False
        job = ImageJob(image_id, org_id)
        try:
            self._save(job)
        except IntegrityError:
            return self.repository.get(job_uuid(image_id)), False
        return job, True

    def note_job(self, image_id: str, envelope: dict[str, Any]) -> None:
        job: ImageJob = self.repository.get(job_uuid(image_id))
        job.note(envelope)
        self._save(job)

    def all_jobs(self) -> list[ImageJob]:
        return [self.repository.get(i) for i in self._created("ImageJob.Accepted")]

    def jobs_with_digest(self, digest: str) -> list[ImageJob]:
        """Images built here to `digest` and not deleted (identical builds share files)."""
        return [j for j in self.all_jobs() if j.digest == digest and j.state == "built"]

    def all_vms(self) -> list[Vm]:
        """Every Vm ever accepted here (the host-local store is small)."""
        return [self.repository.get(i) for i in self._created("Vm.Accepted")]

    def _created(self, topic_end: str) -> list[Any]:
        ids: list[Any] = []
        start = 0
        while True:
            notes = self.recorder.select_notifications(start, 500, None, (),
                                                       inclusive_of_start=False)
            if not notes:
                break
            ids.extend(n.originator_id for n in notes if n.topic.endswith(topic_end))
            start = notes[-1].id
        return ids


def _track(active: dict[str, tuple[int, int, str, str]], vm: Any) -> None:
    if not isinstance(vm, Vm):
        return
    if vm.active:
        active[vm.sandbox_id] = (vm.spec.get("vcpus", 1), vm.spec.get("memory_mib", 0),
                                 vm.org_id, vm.state)
    else:
        active.pop(vm.sandbox_id, None)
