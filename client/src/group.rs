//! Consumer-group requests as typed calls on [`Client`]: join, heartbeat, leave,
//! commit and fetch offsets, and the admin calls behind `eddy group`.
//!
//! [`crate::Consumer::subscribe`] uses these; they are public for tools and for
//! tests that drive the protocol step by step.

use crate::connection::{Client, ClientError};
use crate::protocol::{
    CommitOffset, CommittedOffset, GroupListing, MemberDescription, Request, Response,
};

/// A member's place in a generation, from [`Client::join_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Generation.
    pub generation: i32,
    /// This member's id.
    pub member_id: String,
    /// The group's strategy.
    pub strategy: String,
    /// Partitions assigned to this member.
    pub assignment: Vec<(String, u32)>,
}

/// What a member sends with [`Client::join_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// Group id.
    pub group: String,
    /// The id from an earlier join, or empty.
    pub member_id: String,
    /// `client.id`.
    pub client_id: String,
    /// Topics subscribed to.
    pub topics: Vec<String>,
    /// Strategy names, preferred first.
    pub strategies: Vec<String>,
    /// `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// Rebalance timeout (Kafka's `max.poll.interval.ms`).
    pub rebalance_timeout_ms: u32,
    /// Partitions owned now.
    pub owned: Vec<(String, u32)>,
}

/// A group as [`Client::describe_group`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group: String,
    /// State name.
    pub state: String,
    /// Generation.
    pub generation: i32,
    /// Strategy in use.
    pub strategy: String,
    /// Members.
    pub members: Vec<MemberDescription>,
    /// Committed offsets.
    pub offsets: Vec<CommittedOffset>,
}

/// The group id ListGroups is routed by: with one `__consumer_offsets`
/// partition, one coordinator holds every group.
const EVERY_GROUP: &str = "";

impl Client {
    /// Joins a group; waits until the rebalance completes.
    pub async fn join_group(&self, join: JoinRequest) -> Result<Joined, ClientError> {
        let group = join.group.clone();
        let request = Request::JoinGroup {
            group: join.group,
            member_id: join.member_id,
            client_id: join.client_id,
            topics: join.topics,
            strategies: join.strategies,
            session_timeout_ms: join.session_timeout_ms,
            rebalance_timeout_ms: join.rebalance_timeout_ms,
            owned: join.owned,
        };
        match self.group_call(&group, request).await? {
            Response::JoinGroup {
                generation,
                member_id,
                strategy,
                assignment,
            } => Ok(Joined {
                generation,
                member_id,
                strategy,
                assignment,
            }),
            other => Err(self.unexpected("JoinGroup", &other)),
        }
    }

    /// Sends a heartbeat the node may hold up to `wait_ms`.
    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        wait_ms: u32,
    ) -> Result<(), ClientError> {
        let request = Request::Heartbeat {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
            wait_ms,
        };
        match self.group_call(group, request).await? {
            Response::Heartbeat => Ok(()),
            other => Err(self.unexpected("Heartbeat", &other)),
        }
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        let request = Request::LeaveGroup {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
        };
        match self.group_call(group, request).await? {
            Response::LeaveGroup => Ok(()),
            other => Err(self.unexpected("LeaveGroup", &other)),
        }
    }

    /// Commits offsets durably. `generation = -1` with an empty `member_id`
    /// commits for a group without active members.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: Vec<CommitOffset>,
    ) -> Result<(), ClientError> {
        let request = Request::OffsetCommit {
            group: group.to_owned(),
            member_id: member_id.to_owned(),
            generation,
            offsets,
        };
        match self.group_call(group, request).await? {
            Response::OffsetCommit => Ok(()),
            other => Err(self.unexpected("OffsetCommit", &other)),
        }
    }

    /// A group's committed offsets (of `partitions`, or all).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<(String, u32)>>,
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        let request = Request::OffsetFetch {
            group: group.to_owned(),
            partitions,
        };
        match self.group_call(group, request).await? {
            Response::OffsetFetch { offsets } => Ok(offsets),
            other => Err(self.unexpected("OffsetFetch", &other)),
        }
    }

    /// Every group the node knows.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        match self.group_call(EVERY_GROUP, Request::ListGroups).await? {
            Response::ListGroups { groups } => Ok(groups),
            other => Err(self.unexpected("ListGroups", &other)),
        }
    }

    /// A group's state, members and committed offsets.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        let request = Request::DescribeGroup {
            group: group.to_owned(),
        };
        match self.group_call(group, request).await? {
            Response::DescribeGroup {
                group,
                state,
                generation,
                strategy,
                members,
                offsets,
            } => Ok(GroupDescription {
                group,
                state,
                generation,
                strategy,
                members,
                offsets,
            }),
            other => Err(self.unexpected("DescribeGroup", &other)),
        }
    }

    /// Deletes a group without members and its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let request = Request::DeleteGroup {
            group: group.to_owned(),
        };
        match self.group_call(group, request).await? {
            Response::DeleteGroup => Ok(()),
            other => Err(self.unexpected("DeleteGroup", &other)),
        }
    }
}
