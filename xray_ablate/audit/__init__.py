"""Saliency audit: how much of a trained model's attribution lies outside the lungs and in the image border."""

from xray_ablate.audit.run import METHODS, AuditResult, audit_run, audit_split, check_layers, choose_images

__all__ = ["METHODS", "AuditResult", "AuditConfig", "audit_run", "audit_split", "check_layers", "choose_images"]
