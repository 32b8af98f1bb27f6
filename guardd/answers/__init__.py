"""What load balancers, proxies and visitors are told: health, gate, pages, agent lines."""
