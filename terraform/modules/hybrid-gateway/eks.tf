# Maps the gateway role to the Kubernetes group that packaging/kubernetes/rbac.yaml binds
# (CiliumNode list/watch, CiliumVTEPConfig, the election Lease). No access policy: RBAC
# alone grants what the daemon needs. Needs authentication mode API or API_AND_CONFIG_MAP.
resource "aws_eks_access_entry" "gateway" {
  cluster_name      = var.cluster_name
  principal_arn     = aws_iam_role.this.arn
  kubernetes_groups = [var.kubernetes_group]
  type              = "STANDARD"
  tags              = local.tags
}
