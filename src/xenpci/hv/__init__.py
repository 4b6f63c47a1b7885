"""Layer 2: the hypervisor (domains, memory, grants, event channels, permissions, IOMMU)."""
